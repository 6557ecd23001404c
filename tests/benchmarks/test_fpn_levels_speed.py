"""benchmarks/fpn_levels_speed.py picks the instances it explains by anchor index, one per FPN level: those indices
are checked against torchvision's own AnchorGenerator (the anchors a RetinaNet head's output rows stand for), and the
report's table is checked on a fixed input (ratios of the run's own numbers, a zero level printed as zero)."""

from __future__ import annotations

import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import _default_anchorgen

from benchmarks.fpn_levels_speed import centre_anchor, level_anchor_ranges, level_maxima, markdown

SIZES = [(40, 40), (20, 20), (10, 10), (5, 5), (3, 3)]  # RetinaNet's P3-P7 at 320x320


def test_centre_anchors_are_torchvisions_anchors_at_each_levels_centre() -> None:
    generator = _default_anchorgen()
    per_location = int(generator.num_anchors_per_location()[0])
    features = [torch.zeros(1, 1, h, w) for h, w in SIZES]
    anchors = generator(ImageList(torch.zeros(1, 3, 320, 320), [(320, 320)]), features)[0]
    ranges = level_anchor_ranges(SIZES, per_location)
    assert ranges[-1][1] == anchors.shape[0] == 19206
    for level, ((start, _), (h, w)) in enumerate(zip(ranges, SIZES)):
        box = anchors[centre_anchor(start, (h, w), per_location, per_location // 2)]
        stride = 320 // h
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        assert torch.allclose(torch.stack(centre), torch.tensor([w // 2 * stride, h // 2 * stride], dtype=box.dtype))
        side = generator.sizes[level][1]  # the middle scale; base anchor per_location // 2 has aspect ratio 1
        assert torch.allclose(box[2:] - box[:2], torch.tensor([side, side], dtype=box.dtype), atol=1.0)


def test_markdown_gives_ratios_of_the_runs_numbers_and_each_levels_maximum() -> None:
    import numpy as np

    labels = ["backbone.fpn['0']", "backbone.fpn['p6']"]
    maps = {labels[0]: {"gradcam": np.array([[[0.0, 1.0]], [[0.0, 0.0]]])},
            labels[1]: {"gradcam": np.array([[[0.0, 0.0]], [[0.25, 0.5]]])}}
    row = lambda method, n, s, f: {"method": method, "instances": n, "seconds_per_image": s,  # noqa: E731
                                   "scorer_forwards_run": f}
    bundle = lambda labels, k, export, rows: {"target_layers": labels, "channels": k,  # noqa: E731
                                              "feature_sizes": [[4, 4]] * len(labels), "export_seconds": export,
                                              "rows": rows}
    report = {"cpu": "cpu-2cores", "date": "2026-12-08", "model": "m", "input_size": [64, 64], "anchor_count": 10,
              "load_average_1min": [4.0, 5.0], "fast": 2, "fusion_level_max": {labels[0]: 1.0, labels[1]: 0.5},
              "bundles": {"fpn_levels": bundle(labels, [8, 8], 30.0, [row("gradcam", 1, 3.0, 0),
                                                                       row("fusion (fast 2)", 1, 9.0, 4)]),
                          "layer4": bundle(["backbone.body.layer4"], [16], 20.0, [row("gradcam", 1, 2.0, 0),
                                                                                   row("fusion (fast 2)", 1, 3.0, 2)])},
              "level_contributions": [{"anchor": a, "level": labels[r],
                                       "gradcam_level_max": level_maxima(maps, "gradcam", r)}
                                      for r, a in enumerate((3, 9))]}
    text = markdown(report)
    assert "| export (s) | 30.0 | 20.0 | 1.50x |" in text
    assert "| gradcam, 1 instance (s) | 3.00 | 2.00 | 1.50x |" in text
    assert "| fusion (fast 2), 1 instance (s) | 9.00 | 3.00 | 3.00x |" in text
    assert "| fusion (fast 2): scorer forwards run | 4 | 2 | |" in text
    assert "| 3 (backbone.fpn['0']) | 1 | 0 |" in text and "| 9 (backbone.fpn['p6']) | 0 | 0.5 |" in text
