"""`fusioncam explain --methods gradcam` computes Grad-CAM only (no Score-CAM sweep) and its panel shows the image
and Grad-CAM; with Fusion-CAM the panel also shows the Grad-CAM and Score-CAM it combines (computed for it anyway)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from fusioncam.cli.main import main
from fusioncam.images import read_rgb
from fusioncam.report.pictures import panel
from fusioncam.runtime import Explainer
from fusioncam.runtime.methods import METHOD_TITLES
from tests.support.safety_helpers import tiny_bundle, write_images


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("asked"))


def _spy_methods(monkeypatch) -> list[tuple[str, ...]]:
    asked = []
    original = Explainer.explain

    def recording(self, images, targets=None, methods=("fusion",), *args, **kwargs):
        asked.append(tuple(methods))
        return original(self, images, targets, methods, *args, **kwargs)

    monkeypatch.setattr(Explainer, "explain", recording)
    return asked


def _png(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("methods, shown", [
    ("gradcam", ("gradcam",)),
    ("gradcam,xgradcam", ("gradcam", "xgradcam")),
    ("fusion", ("gradcam", "scorecam", "fusion")),
    ("fullgrad,shapleycam", ("fullgrad", "shapleycam")),
])
def test_only_the_asked_methods_are_computed_and_shown(bundle, tmp_path, monkeypatch, methods, shown):
    image = write_images(tmp_path / "in", ["a.png"])[0]
    out = tmp_path / "out"
    asked = _spy_methods(monkeypatch)
    assert main(["explain", str(image), "--model", str(bundle), "--out", str(out), "--device", "cpu",
                 "--methods", methods]) == 0
    assert asked == [shown]
    record = json.loads((out / "results.json").read_text())["images"][0]
    if "fusion" in shown:  # the Score-CAM sweep ran, and Fusion-CAM's record is complete
        assert record["forwards_run"] > 0 and set(record["betas"]) and record["fusion_stats"]["shape"] == [16, 16]
    else:  # no sweep at all
        assert record["forwards_run"] == 0 and record["betas"] == {} and record["fusion_stats"] == {}
    # the panel is exactly the image and the shown methods' maps, recomputed by the Explainer alone
    rgb = read_rgb(image)
    with Explainer(bundle, device="cpu") as explainer:
        from fusioncam.images import preprocess

        manifest = explainer.bundle.manifest
        alone = explainer.explain(preprocess(rgb, manifest.input_size, manifest.mean, manifest.std)[None],
                                  methods=shown)
    title = f"{alone.class_name(0)}  p={float(alone.probabilities[0]):.3f}"
    expected = panel(rgb, [(METHOD_TITLES[m], alone.maps[m][0]) for m in shown], title)
    got = _png(out / record["files"]["panel"])
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    for method in methods.split(","):
        np.testing.assert_allclose(np.load(out / record["files"][f"{method}_npy"]), alone.maps[method][0], atol=1e-6)
