"""`fusioncam evaluate` on a segmentation bundle: its record (results.json), metrics.csv and metrics.md hold the numbers
the Python metrics (fusioncam.metrics.segmentation.evaluate_segmentation_maps) give for the same images, classes and
regions; --region is refused for a classifier."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch

import fusioncam
from fusioncam.cli.main import main
from fusioncam.images import load_batch
from fusioncam.metrics.evaluation import METRICS
from fusioncam.metrics.segmentation import evaluate_segmentation_maps

SIZE = 24
STEP = 48
METHODS = ("gradcam", "scorecam", "fusion")
NAMES = ["sky", "road", "car"]
FIELDS = {"average_drop": "average_drop", "increase_in_confidence": "increase", "deletion_auc": "deletion_auc",
          "insertion_auc": "insertion_auc"}


def tiny_segmenter() -> torch.nn.Module:
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1)).eval()
    with torch.no_grad():
        model[2].weight.mul_(4.0)
    return model


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("segeval") / "seg.fcam"
    fusioncam.export_torch_segmentation(tiny_segmenter(), "1", out, input_size=(SIZE, SIZE), class_names=NAMES)
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("segphotos")
    paths = []
    for seed in range(2):
        rgb = np.random.default_rng(seed).integers(0, 256, (30 + seed * 7, 40, 3), dtype=np.uint8)
        path = folder / f"photo{seed}.png"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


@pytest.mark.parametrize("region", [None, (2, 3, 20, 17)])
def test_evaluate_records_the_python_metrics(bundle, photos, tmp_path, region, capsys) -> None:
    out = tmp_path / "report"
    arguments = ["evaluate", *map(str, photos), "--model", str(bundle), "--out", str(out), "--device", "cpu",
                 "--methods", ",".join(METHODS), "--step", str(STEP)]
    if region is not None:
        arguments += ["--region", ",".join(map(str, region))]
    assert main(arguments) == 0, capsys.readouterr().err
    record = json.loads((out / "results.json").read_text())
    assert record["score"] == "region probability" and record["complete"]
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        for i, path in enumerate(photos):
            image = load_batch([path], (SIZE, SIZE))[0]
            explanation = explainer.explain(image, methods=METHODS, regions=region)
            want = evaluate_segmentation_maps(explainer, image, explanation, step=STEP)
            got = record["images"][i]
            assert got["class_index"] == int(explanation.classes[0])
            assert got["region_probability"] == pytest.approx(float(explanation.probabilities[0]), abs=1e-7)
            assert got["region_area"] == pytest.approx(float(explanation.region_weights[0].sum()))
            for method in METHODS:
                for metric in METRICS:
                    expected = float(getattr(want[method], FIELDS[metric])[0])
                    assert got["metrics"][method][metric] == pytest.approx(expected, abs=1e-9), (method, metric)
    rows = {(row["method"], row["metric"]): float(row["mean"])
            for row in csv.DictReader((out / "metrics.csv").read_text().splitlines())}
    for method in METHODS:
        for metric in METRICS:
            mean = np.mean([image["metrics"][method][metric] for image in record["images"]])
            assert rows[(method, metric)] == pytest.approx(mean, abs=1e-12)
    markdown = (out / "metrics.md").read_text()
    assert "region probability" in markdown and "class predicted on most output pixels" in markdown
    if region is not None:
        assert "(2, 3, 20, 17)" in markdown
    assert cv2.imread(str(out / "curves.png")) is not None


def test_region_is_refused_for_a_classifier(tmp_path, photos, capsys) -> None:
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                     torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    fusioncam.export_torch(classifier, "1", tmp_path / "c.fcam", input_size=(16, 16))
    code = main(["evaluate", str(photos[0]), "--model", str(tmp_path / "c.fcam"), "--out", str(tmp_path / "o"),
                 "--device", "cpu", "--region", "all"])
    assert code != 0
    assert "segmentation bundles only" in capsys.readouterr().err
    assert not (tmp_path / "o" / "metrics.md").exists()
