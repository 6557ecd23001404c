"""explain-dataset on a bundle with two target layers (seeded random ResNet-18, `layer3` + `layer4`, 64x64) on a local
Ray (2 CPUs, 127.0.0.1, no dashboard, shut down at the end of the module): each row's maps are the maps
Explainer.explain aggregates over the layers for the same files, the evaluation's metrics are those of the metric
functions on those maps, summary.json names both layers, and FullGrad/ShapleyCAM are refused before Ray starts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: a loopback-only local Ray
ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'fusioncam[dataset]'")
pytest.importorskip("pyarrow", reason="pyarrow is not installed: pip install 'fusioncam[dataset]'")
pytest.importorskip("torchvision")

import fusioncam  # noqa: E402
from fusioncam.dataset import explain_dataset  # noqa: E402
from fusioncam.errors import InputError  # noqa: E402
from fusioncam.metrics.evaluation import METRICS, explain_and_evaluate  # noqa: E402
from fusioncam.dataset.rows import map_column, metric_column, tensor_maps  # noqa: E402
from tests.support.several_layer_resnet18 import LAYERS, noise_photos, several_layer_resnet18_bundle  # noqa: E402
from tests.support.sharp_resnet18 import SIZE  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]  # an export and Ray actors: about 40 s on 2 cores

METHODS = ("gradcam", "gradcam++", "layercam")
STEP = 512


@pytest.fixture(scope="module")
def bundle() -> Path:
    return several_layer_resnet18_bundle()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Four images of other sizes than the model's (each is resized on reading, as `fusioncam explain` reads files)."""
    return noise_photos(tmp_path_factory.mktemp("photos"), [(70, 90), (64, 64), (48, 80), (100, 60)], seed=11)


def test_rows_hold_the_aggregated_maps_and_the_summary_names_both_layers(bundle, photos, tmp_path):
    run = explain_dataset(photos[0].parent, bundle, out=tmp_path / "out", methods=METHODS, evaluate=True, step=STEP,
                          workers=1, batch_images=2, map_dtype="float32")
    assert run.summary["run"]["target_layers"] == LAYERS
    assert run.summary["run"]["target_layer"] == LAYERS[0]  # the first layer under the one-layer key, as before
    table = run.table()
    sources = table.column("source").to_pylist()
    assert sources == [str(p) for p in photos] and set(table.column("error").to_pylist()) == {None}
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        want = explainer.explain_files(photos, methods=METHODS)
        images, _ = fusioncam.images.load_batch(photos, SIZE)
        evaluated = explain_and_evaluate(explainer, images, METHODS, step=STEP)
    assert set(want.layer_maps) == set(LAYERS)
    assert table.column("class_index").to_pylist() == want.classes.tolist()
    for method in METHODS:
        got = tensor_maps(table.column(map_column(method)))
        np.testing.assert_allclose(got, want.maps[method], rtol=0, atol=1e-6, err_msg=method)
        for layer in LAYERS:  # the rows' maps are the aggregate, not either layer's own
            assert np.abs(got - want.layer_maps[layer][method]).max() > 1e-3, (method, layer)
        for metric in METRICS:
            np.testing.assert_allclose(table.column(metric_column(method, metric)).to_numpy(),
                                       evaluated.scores[method].per_image[metric], rtol=1e-6, atol=1e-9,
                                       err_msg=f"{method} {metric}")


def test_one_layer_methods_are_refused_before_anything_runs(bundle, photos, tmp_path):
    out = tmp_path / "refused"
    with pytest.raises(InputError, match=r"fullgrad cannot run on bundle .*several target layers \(layer3, layer4\)"):
        explain_dataset(photos[0].parent, bundle, out=out, methods=("gradcam", "fullgrad"))
    assert not out.exists()  # refused before the output folder was made
