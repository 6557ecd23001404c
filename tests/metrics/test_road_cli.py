"""`fusioncam evaluate --road`: the ROAD values it writes are road_scores' on the same maps and classes."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

import fusioncam
from fusioncam.cli.main import main
from fusioncam.images import preprocess, read_rgb
from fusioncam.metrics.road import road_scores
from tests.support.tiny_models import tiny_bundle_at

SIZE = 16


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle_at(tmp_path_factory.mktemp("tiny"), size=SIZE, seed=4)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (24, 20, 3), dtype=np.uint8))
    return folder


def test_evaluate_road_writes_road_scores(bundle, image_folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["evaluate", str(image_folder), "--model", str(bundle), "--out", str(out), "--methods",
                 "gradcam,fusion", "--step", "64", "--device", "cpu", "--batch", "7", "--road",
                 "--road-percentiles", "30,70"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    record = json.loads((out / "results.json").read_text())
    assert record["road_percentiles"] == [30, 70]
    images = np.stack([preprocess(read_rgb(image_folder / n), (SIZE, SIZE)) for n in ("a.png", "b.png", "c.png")])
    with fusioncam.Explainer(bundle, device="cpu", batch_size=5) as explainer:
        explanation = explainer.explain(images, methods=("gradcam", "fusion"))
        for method in ("gradcam", "fusion"):
            want = road_scores(explainer, images, explanation.maps[method], explanation.classes, percentiles=(30, 70))
            got = {key: np.array([image["metrics"][method][key] for image in record["images"]])
                   for key in ("road_morf", "road_lerf", "road_combined")}
            assert np.abs(got["road_morf"] - want.morf).max() < 1e-9
            assert np.abs(got["road_lerf"] - want.lerf).max() < 1e-9
            assert np.abs(got["road_combined"] - want.combined).max() < 1e-9
            with open(out / "metrics.csv", newline="") as handle:
                rows = {(r["method"], r["metric"]): r for r in csv.DictReader(handle)}
            assert float(rows[(method, "road_lerf")]["mean"]) == pytest.approx(float(want.lerf.mean()), abs=1e-9)
    markdown = (out / "metrics.md").read_text()
    assert "ROAD MoRF ↓ | ROAD LeRF ↑ | ROAD combined ↑" in markdown and "percentile p of the map (30, 70)" in markdown
    assert "ROAD combined ↑" in captured.out


def test_evaluate_without_road_has_no_road_columns(bundle, image_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["evaluate", str(image_folder / "a.png"), "--model", str(bundle), "--out", str(out), "--methods",
                 "gradcam", "--step", "256", "--device", "cpu"]) == 0
    assert "road_percentiles" not in json.loads((out / "results.json").read_text())
    assert "ROAD" not in (out / "metrics.md").read_text() and "road_" not in (out / "metrics.csv").read_text()


@pytest.mark.parametrize("args,message", [
    (["--road", "--road-percentiles", "0,50"], "outside (0, 100)"),
    (["--road", "--road-percentiles", "10,x"], "not an int percentile"),
    (["--road", "--road-percentiles", "12.5"], "not an int percentile"),
    (["--road", "--road-percentiles", ","], "no percentile"),
])
def test_bad_road_percentiles_are_usage_errors(bundle, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--model", str(bundle), "--out", str(tmp_path / "out"), *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_road_percentiles_without_road_is_refused(bundle, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["evaluate", "--model", str(bundle), "--out", str(out), "--road-percentiles", "10,20"])
    assert code == 2 and "add --road" in capsys.readouterr().err and not out.exists()


def test_road_on_a_segmentation_bundle_is_refused(image_folder, tmp_path, capsys):
    import torch

    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1)).eval()
    fusioncam.export_torch_segmentation(model, "1", tmp_path / "seg.fcam", input_size=(SIZE, SIZE))
    out = tmp_path / "out"
    code = main(["evaluate", str(image_folder / "a.png"), "--model", str(tmp_path / "seg.fcam"), "--out", str(out),
                 "--device", "cpu", "--road"])
    err = capsys.readouterr().err
    assert code == 2 and "classification bundles only" in err and "segmentation task" in err
    assert not out.exists() or not any(out.iterdir())
