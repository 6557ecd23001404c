"""explain-dataset on a torchvision Faster R-CNN detection bundle (seeded fasterrcnn_mobilenet_v3_large_fpn at 128x128)
on a local Ray (2 CPUs, 127.0.0.1, no dashboard, one worker): one row per instance, each row's slot, class, score,
box and Grad-CAM map equal to Explainer.explain on the same image with the same selection."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: a loopback-only local Ray
ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'fusioncam[dataset]'")
pytest.importorskip("pyarrow", reason="pyarrow is not installed: pip install 'fusioncam[dataset]'")

import fusioncam  # noqa: E402
from fusioncam.dataset import explain_dataset  # noqa: E402
from fusioncam.dataset.rows import map_column, tensor_maps  # noqa: E402
from fusioncam.images import load_batch  # noqa: E402
from fusioncam.tasks.detection import InstanceSelection  # noqa: E402
from fusioncam.bundle import load_bundle  # noqa: E402
from tests.support.faster_rcnn_models import exported_bundle  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]  # a two-stage export and Ray actors


def test_one_row_per_instance_equal_to_the_explainer(tmp_path):
    bundle = exported_bundle(None)  # the default target: the FPN levels the RoI head pools (two)
    assert len(load_bundle(bundle).layer_names) == 2
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = []
    for seed in range(2):
        small = np.random.default_rng(60 + seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)
        paths.append(folder / f"photo{seed}.png")
        cv2.imwrite(str(paths[-1]), cv2.resize(small, (150, 120), interpolation=cv2.INTER_CUBIC))
    selection = InstanceSelection(min_score=0.0, max_instances=3)
    run = explain_dataset(folder, bundle, out=tmp_path / "out", methods=("gradcam",), batch_images=2, workers=1,
                          map_dtype="float32", instances=selection)
    table = run.table()
    assert table.column("error").null_count == table.num_rows
    sources = table.column("source").to_pylist()
    maps = tensor_maps(table.column(map_column("gradcam")))
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        manifest = explainer.bundle.manifest
        for path in paths:
            image = load_batch([path], manifest.input_size, manifest.mean, manifest.std)[0]
            want = explainer.explain(image, methods="gradcam", instances=selection)
            rows = [i for i, s in enumerate(sources) if s == str(path)]
            assert len(rows) == len(want.classes) == 3
            for k, row in enumerate(rows):
                assert table.column("anchor")[row].as_py() == int(want.anchors[k])
                assert table.column("class_index")[row].as_py() == int(want.classes[k])
                assert table.column("probability")[row].as_py() == pytest.approx(float(want.probabilities[k]),
                                                                                   abs=1e-6)
                np.testing.assert_allclose(table.column("box")[row].as_py(), want.boxes[k], atol=1e-4)
                np.testing.assert_allclose(maps[row], want.maps["gradcam"][k], atol=1e-5)
            assert float(np.abs(want.maps["gradcam"]).max()) > 0
