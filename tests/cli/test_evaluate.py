"""`fusioncam evaluate` on a tiny bundle: the files it writes hold exactly what the metric functions return."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

import fusioncam
from fusioncam.cli.main import main
from fusioncam.report.evaluation import mean_interval
from fusioncam.images import preprocess, read_rgb, sample_images
from fusioncam.metrics import average_drop, deletion_auc, increase_in_confidence, insertion_auc
from tests.support.tiny_models import tiny_bundle_at

SIZE = 16
STEP = 40  # 256 pixels: 7 steps, the last one shorter
BATCH = 9
CLASS_NAMES = ["zero", "one", "two", "three", "four"]
COLUMNS = ["Average Drop (%) ↓", "Increase in Confidence (%) ↑", "Deletion AUC ↓", "Insertion AUC ↑"]
TITLES = {"gradcam": "Grad-CAM", "scorecam": "Score-CAM", "fusion": "Fusion-CAM"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_bundle_at(tmp_path_factory.mktemp("tiny"), size=SIZE, classes=len(CLASS_NAMES), seed=4,
                          class_names=CLASS_NAMES)


def expected_metrics(bundle: Path, images: np.ndarray, methods) -> dict[str, dict[str, object]]:
    """What the metric functions return for each method's maps of the images' top classes."""
    explainer = fusioncam.Explainer(bundle, device="cpu", batch_size=BATCH)
    explanation = explainer.explain(images, methods=methods)
    found = {}
    for method in methods:
        maps, classes = explanation.maps[method], explanation.classes
        found[method] = {
            "average_drop": average_drop(explainer, images, maps, classes),
            "increase_in_confidence": increase_in_confidence(explainer, images, maps, classes),
            "deletion_auc": deletion_auc(explainer, images, maps, classes, step=STEP),
            "insertion_auc": insertion_auc(explainer, images, maps, classes, step=STEP),
        }
    return found


def read_csv(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path, newline="") as handle:
        return {(row["method"], row["metric"]): row for row in csv.DictReader(handle)}


def table_cells(markdown: str) -> dict[str, list[tuple[float, float]]]:
    """Method title -> [(mean, half-width)] of the summary table's rows."""
    cells = {}
    for line in markdown.splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if len(parts) == 5 and parts[0] in TITLES.values():
            cells[parts[0]] = [tuple(float(v) for v in re.fullmatch(r"(\S+) ± (\S+)", p).groups()) for p in parts[1:]]
    return cells


def test_sample_images_report_equals_the_metric_functions(bundle, tmp_path, capsys):
    out = tmp_path / "evaluation"
    code = main(["evaluate", "--model", str(bundle), "--out", str(out), "--step", str(STEP), "--batch", str(BATCH),
                 "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "metrics.csv", "metrics.md", "results.json"]

    samples = sample_images()
    images = np.stack([preprocess(rgb, (SIZE, SIZE)) for rgb in samples.values()])
    want = expected_metrics(bundle, images, ("gradcam", "scorecam", "fusion"))
    rows = read_csv(out / "metrics.csv")
    assert [key[0] for key in rows][::4] == ["gradcam", "scorecam", "fusion"]
    for method, metrics in want.items():
        for metric, value in metrics.items():
            row = rows[(method, metric)]
            assert int(row["n"]) == 5
            assert float(row["mean"]) == pytest.approx(float(np.mean(value)), rel=1e-9, abs=1e-12)
            if metric.endswith("_auc"):  # per-image values: the interval is mean ± 1.96 sd / sqrt(5)
                half = 1.96 * np.std(value, ddof=1) / np.sqrt(5)
                assert float(row["ci95_half_width"]) == pytest.approx(half, rel=1e-9)
                assert float(row["ci95_low"]) == pytest.approx(np.mean(value) - half, rel=1e-9, abs=1e-12)

    markdown = (out / "metrics.md").read_text()
    assert "mean ± 1.96·sd/√n" in markdown and "n = 5 images" in markdown
    cells = table_cells(markdown)
    assert captured.out.strip() in markdown  # the printed table is the file's table
    assert table_cells(captured.out) == cells
    for method, metrics in want.items():
        for (mean, half), (metric, value) in zip(cells[TITLES[method]], metrics.items()):
            digits = 4 if metric.endswith("_auc") else 2
            assert mean == round(float(np.mean(value)), digits)
            assert half == round(float(rows[(method, metric)]["ci95_half_width"]), digits)
    for name in samples:
        assert f"| {name} |" in markdown

    curves = cv2.imread(str(out / "curves.png"))
    assert curves.shape == (420, 1120, 3)
    assert (curves < 250).any(axis=2).mean() > 0.02  # axes, lines and text were drawn


def test_image_files_and_chosen_methods(bundle, tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("b.png", "a.png"):
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    out = tmp_path / "out"
    code = main(["evaluate", str(folder), "--model", str(bundle), "--out", str(out), "--methods", "fusion, gradcam",
                 "--step", str(STEP), "--batch", str(BATCH), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = read_csv(out / "metrics.csv")
    assert list(dict.fromkeys(key[0] for key in rows)) == ["fusion", "gradcam"]
    images = np.stack([preprocess(read_rgb(folder / name), (SIZE, SIZE)) for name in ("a.png", "b.png")])
    want = expected_metrics(bundle, images, ("fusion", "gradcam"))
    for method, metrics in want.items():
        for metric, value in metrics.items():
            assert float(rows[(method, metric)]["mean"]) == pytest.approx(float(np.mean(value)), rel=1e-9, abs=1e-12)
    markdown = (out / "metrics.md").read_text()
    assert "| a | " in markdown and "| b | " in markdown and "| Score-CAM |" not in markdown


def test_one_image_has_no_interval(bundle, tmp_path, capsys):
    image = tmp_path / "only.png"
    cv2.imwrite(str(image), np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8))
    out = tmp_path / "out"
    assert main(["evaluate", str(image), "--model", str(bundle), "--out", str(out), "--step", "256",
                 "--methods", "gradcam"]) == 0
    assert "± n/a" in capsys.readouterr().out
    row = read_csv(out / "metrics.csv")[("gradcam", "deletion_auc")]
    assert row["n"] == "1" and row["ci95_half_width"] == "nan"


@pytest.mark.parametrize("args,message", [
    (["--step", "257"], "step must be between 1 and the image's 256 pixels"),
    (["--methods", "fusion,nosuch"], "unknown method(s) nosuch"),
    (["missing.png"], "does not exist"),
])
def test_errors_exit_2_and_write_nothing(bundle, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code = main(["evaluate", "--model", str(bundle), "--out", str(out), "--device", "cpu", *args])
    captured = capsys.readouterr()
    assert code == 2
    assert message in captured.err and captured.err.startswith("fusioncam evaluate: error:")
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("args", [["--step", "0"], ["--batch", "-1"], ["--methods", ","], ["--device", "tpu"]])
def test_bad_arguments_are_usage_errors(bundle, tmp_path, args):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--model", str(bundle), "--out", str(tmp_path / "out"), *args])
    assert exit_info.value.code == 2


def test_output_folder_that_is_a_file(bundle, tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("not a folder")
    assert main(["evaluate", "--model", str(bundle), "--out", str(out), "--step", "64"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_unknown_model(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "nothing.bundle"), "--out", str(tmp_path / "out")]) == 2
    assert "not found" in capsys.readouterr().err


def test_mean_interval():
    mean, half = mean_interval(np.array([1.0, 2.0, 4.0, 7.0]))
    assert mean == 3.5
    assert half == pytest.approx(1.96 * np.sqrt(((1 - 3.5) ** 2 + 1.5**2 + 0.5**2 + 3.5**2) / 3) / 2)


def test_an_output_that_would_replace_an_input_image(bundle, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    image = out / "curves.png"
    cv2.imwrite(str(image), np.zeros((20, 20, 3), dtype=np.uint8))
    before = image.read_bytes()
    assert main(["evaluate", str(image), "--model", str(bundle), "--out", str(out), "--step", "64"]) == 2
    assert "would overwrite the input image" in capsys.readouterr().err
    assert image.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["curves.png"]
