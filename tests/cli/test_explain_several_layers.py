"""`fusioncam explain` on a bundle with two target layers (seeded random ResNet-18, `layer3` + `layer4`, 64x64):
results.json names every layer (target_layers; target_layer keeps the first), index.html names them, each
method's .npy map is the map Explainer.explain aggregates over the layers, and FullGrad/ShapleyCAM are refused
before any image is explained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torchvision")

import fusioncam  # noqa: E402
from fusioncam.cli.main import main  # noqa: E402
from tests.support.several_layer_resnet18 import LAYERS, noise_photos, several_layer_resnet18_bundle  # noqa: E402

pytestmark = pytest.mark.slow  # the two-layer ResNet-18 export alone takes several seconds on 2 cores

METHODS = ("gradcam", "layercam")


@pytest.fixture(scope="module")
def bundle() -> Path:
    return several_layer_resnet18_bundle()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    return noise_photos(tmp_path_factory.mktemp("photos"), [(64, 64), (50, 90)], seed=5)


def test_results_name_every_layer_and_the_maps_are_the_aggregate(bundle, photos, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["explain", *map(str, photos), "--model", str(bundle), "--out", str(out), "--methods",
                 ",".join(METHODS), "--device", "cpu"])
    capsys.readouterr()
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["target_layers"] == LAYERS
    assert results["model"]["target_layer"] == LAYERS[0]  # the key one-layer readers know, unchanged
    assert "layers layer3, layer4 (maps aggregated over them)" in (out / "index.html").read_text()
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        want = explainer.explain_files(photos, methods=METHODS)
    for i, path in enumerate(photos):
        for method in METHODS:
            got = np.load(out / f"{path.stem}_{method}.npy")
            np.testing.assert_allclose(got, want.maps[method][i], rtol=0, atol=1e-6, err_msg=f"{path.name} {method}")
            assert min(np.abs(got - want.layer_maps[layer][method][i]).max() for layer in LAYERS) > 1e-3


def test_one_layer_methods_are_refused_before_any_image(bundle, photos, tmp_path, capsys):
    out = tmp_path / "refused"
    code = main(["explain", str(photos[0]), "--model", str(bundle), "--out", str(out), "--methods", "shapleycam"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err
    assert "shapleycam cannot run" in err and "several target layers (layer3, layer4)" in err
    assert not (out / "results.json").exists()
