"""Several target layers in one bundle: one explain graph whose outputs are each layer's activations and gradients of
the same target score, checked against torch autograd; one explain pass per Explainer call (counted), each layer's
maps equal to a one-layer bundle's; one-layer manifests unchanged; layers on parallel branches; the methods that take
one layer refuse more."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

import fusioncam  # noqa: E402
from fusioncam import Explainer  # noqa: E402
from fusioncam.errors import InputError, LayerError  # noqa: E402
from fusioncam.graph_names import INPUT, TARGET, layer_activations, layer_gradients  # noqa: E402
from fusioncam.runtime.methods.finercam import COMPARISONS  # noqa: E402
from tests.runtime.test_cuda_backend_on_host import host_cuda  # noqa: E402,F401  (the fixture)
from tests.support.small_cnn import SmallNet, images, max_diff  # noqa: E402

LAYERS = ["features.2", "features.1"]  # the user's order: the later layer first (the backward stops at the earlier)
SIZE = (32, 32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SmallNet().eval()


@pytest.fixture(scope="module")
def bundles(model, tmp_path_factory):
    """The two-layer bundle and each layer's own bundle."""
    folder = tmp_path_factory.mktemp("several_layers")
    both = fusioncam.export_torch(model, LAYERS, folder / "both", input_size=SIZE)
    alone = [fusioncam.export_torch(model, layer, folder / layer, input_size=SIZE) for layer in LAYERS]
    return both, alone


def _autograd(model, x: np.ndarray, classes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(activations, d logit_c / d activations) of each of LAYERS by torch autograd."""
    modules = dict(model.named_modules())
    captured = {}
    hooks = [modules[name].register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
             for name in LAYERS]
    try:
        logits = model(torch.from_numpy(x))
        score = logits[torch.arange(len(classes)), torch.tensor(classes)].sum()
        grads = torch.autograd.grad(score, [captured[name] for name in LAYERS])
    finally:
        for hook in hooks:
            hook.remove()
    return [(captured[name].detach().numpy(), grad.numpy()) for name, grad in zip(LAYERS, grads)]


def test_each_layers_gradients_equal_torch_autograd(model, bundles):
    both, _ = bundles
    manifest = both.bundle.manifest
    assert both.bundle.layer_names == LAYERS
    assert manifest.extra_layers == [{"target_layer": "features.1", "target_tensor": manifest.extra_layers[0]
                                      ["target_tensor"], "channels": 8, "feature_size": (16, 16)}]
    assert (manifest.channels, manifest.feature_size) == (16, (8, 8))
    assert [both.bundle.head_path_of(i).name for i in range(2)] == ["head.onnx", "head_1.onnx"]  # one per layer
    session = ort.InferenceSession(str(both.bundle.explain_path), providers=["CPUExecutionProvider"])
    x = images(3, 32, seed=4)
    classes = [0, 3, 4]
    names = [name(i) for i in range(2) for name in (layer_activations, layer_gradients)]
    got = dict(zip(names, session.run(names, {INPUT: x, TARGET: np.array(classes, np.int64)})))
    for index, (acts, grads) in enumerate(_autograd(model, x, classes)):
        assert float(np.abs(grads).max()) > 1e-3  # a gradient that is there to compare
        assert max_diff(got[layer_activations(index)], acts) <= 1e-4
        assert max_diff(got[layer_gradients(index)], grads) <= 1e-4


def test_one_explain_pass_gives_each_layers_maps(bundles, monkeypatch):
    both, alone = bundles
    x = images(2, 32, seed=5)
    methods = ("gradcam", "scorecam", "layercam", "finercam", "ablationcam", "reciprocam")  # the last two: heads
    with Explainer(both, device="cpu") as explainer:
        session = explainer.backend._explain
        runs = []
        real_run = session.run
        monkeypatch.setattr(session, "run", lambda *a, **k: runs.append(1) or real_run(*a, **k), raising=False)
        result = explainer.explain(x, targets=[1, 2], methods=methods)
    assert len(runs) == 1 + COMPARISONS  # one forward + backward for both layers, FinerCAM's comparisons shared
    assert list(result.layer_maps) == LAYERS
    per_layer = []
    for layer, bundle in zip(LAYERS, alone):
        with Explainer(bundle, device="cpu") as one:
            own = one.explain(x, targets=[1, 2], methods=methods)
        for method in methods:
            assert max_diff(result.layer_maps[layer][method], own.maps[method]) <= 1e-6, (layer, method)
        per_layer.append(own.maps)
    # without compat: the mean of the layers' maps, scaled to [0, 1] per image
    for method in methods:
        mean = (per_layer[0][method] + per_layer[1][method]) / 2
        low = mean.min(axis=(1, 2), keepdims=True)
        expected = (mean - low) / ((mean - low).max(axis=(1, 2), keepdims=True) + 1e-7)
        assert max_diff(result.maps[method], expected) <= 1e-6
    # both layers' Score-CAM sweeps ran (8 + 16 channels a image, constant channels skipped)
    assert int(result.forwards_run.sum() + result.forwards_skipped.sum()) == 2 * (8 + 16)


def test_one_layer_manifests_are_written_as_before(bundles):
    _, alone = bundles
    written = json.loads((alone[0].bundle.path / "manifest.json").read_text())
    assert "extra_layers" not in written and alone[0].bundle.manifest.extra_layers is None
    assert alone[0].bundle.head_path is not None


def test_what_takes_one_layer_refuses_several(bundles, tmp_path):
    both, _ = bundles
    with Explainer(both, device="cpu") as explainer:
        with pytest.raises(InputError, match="shapleycam cannot run.*several target layers.*features.2, features.1"):
            explainer.explain(images(1, 32), methods=("gradcam", "shapleycam"))


class _Branches(torch.nn.Module):
    """Two convolutions side by side on the image, summed: neither feeds the other."""

    def __init__(self):
        super().__init__()
        self.left = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.right = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.head((self.left(x) + self.right(x)).mean(dim=(2, 3)))


def test_layers_on_separate_branches_get_their_gradients_from_one_walk(tmp_path):
    """Neither layer feeds the other: the walk stops at both (a feature pyramid's levels are such layers)."""
    torch.manual_seed(0)
    model = _Branches().eval()
    both = fusioncam.export_torch(model, ["left", "right"], tmp_path / "b", input_size=(8, 8))
    assert both.bundle.layer_names == ["left", "right"]
    x = images(2, 8, seed=3)
    captured = {}
    for name in ("left", "right"):
        getattr(model, name).register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
    logits = model(torch.from_numpy(x))
    expected = torch.autograd.grad(logits[[0, 1], [2, 0]].sum(), [captured["left"], captured["right"]])
    session = ort.InferenceSession(str(both.bundle.explain_path), providers=["CPUExecutionProvider"])
    names = [layer_gradients(0), layer_gradients(1)]
    got = session.run(names, {INPUT: x, TARGET: np.array([2, 0], np.int64)})
    for mine, theirs in zip(got, expected):
        assert float(np.abs(theirs.numpy()).max()) > 1e-3
        assert max_diff(mine, theirs.numpy()) <= 1e-4
    assert both.bundle.head_path_of(0) is None and both.bundle.head_path_of(1) is None  # each tail reads the image
    with pytest.raises(LayerError, match="a segmentation bundle explains one layer"):
        fusioncam.export_torch(_Branches().eval(), ["left", "right"], tmp_path / "s", input_size=(8, 8),
                               task="segmentation")


def test_cli_export_takes_several_layers_of_an_onnx_model(model, tmp_path, capsys):
    import onnx

    from fusioncam.bundle import load_bundle
    from fusioncam.cli.main import main

    path = tmp_path / "small.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, *SIZE),), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    convs = [node.output[0] for node in onnx.load(str(path)).graph.node if node.op_type == "Conv"]
    assert main(["export", str(path), "--layer", convs[1], "--layer", convs[0], "--out", str(tmp_path / "a")]) == 0
    assert f"target '{convs[0]}'" in capsys.readouterr().out
    assert main(["export", str(path), "--layer", f"{convs[1]},{convs[0]}", "--out", str(tmp_path / "b")]) == 0
    for out in ("a", "b"):
        bundle = load_bundle(tmp_path / out)
        assert bundle.layer_names == [convs[1], convs[0]]
        assert bundle.layer_feature_sizes == [(8, 8), (16, 16)]


def test_the_cuda_backends_logic_reads_every_layer(bundles, host_cuda):
    """The CUDA backend allocates and binds each layer's outputs (its logic run on the host, as in
    tests/runtime/test_cuda_backend_on_host.py: CuPy as NumPy, the CUDA sessions as CPU ones)."""
    from fusioncam.runtime import cuda_backend

    both, _ = bundles
    x = images(2, 32, seed=6)
    with Explainer(both, device="cpu") as cpu:
        want = cpu.explain(x, targets=[0, 4], methods=("gradcam", "scorecam"))
    with Explainer(both, device="cpu") as explainer:
        backend = cuda_backend.CudaBackend(explainer.bundle, explainer.task, 16)
        explainer.scorer.backend.close()
        explainer.backend = explainer.scorer.backend = backend
        with explainer.scorer.in_use("test") as scorer:
            explainer._z0_constant = explainer.task.constant_baseline(scorer)
        got = explainer.explain(x, targets=[0, 4], methods=("gradcam", "scorecam"))
    for layer in LAYERS:
        for method in ("gradcam", "scorecam"):
            assert max_diff(got.layer_maps[layer][method], want.layer_maps[layer][method]) <= 1e-5, (layer, method)


def test_a_manifest_whose_extra_layers_disagree_with_the_graph_is_refused(bundles, tmp_path):
    import shutil

    from fusioncam.bundle import Manifest, load_bundle
    from fusioncam.errors import BundleError

    both, _ = bundles
    for change, message in ((lambda extra: extra.update(channels=9), r"'extra_layers\[0\]\.channels' says 9"),
                            (lambda extra: extra.update(feature_size=[4, 4]), r"'extra_layers\[0\]\.feature_size'"),
                            (lambda extra: extra.update(channels="8"), "manifest field 'extra_layers', layer 0's channels must be an integer")):
        copy = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(both.bundle.path, copy)
        facts = json.loads((copy / "manifest.json").read_text())
        change(facts["extra_layers"][0])
        manifest = Manifest(**{**facts, "manifest_sha256": ""})
        facts["manifest_sha256"] = manifest.content_sha256()  # re-sealed: only the facts check can tell
        (copy / "manifest.json").write_text(json.dumps(facts))
        with pytest.raises(BundleError, match=message):
            load_bundle(copy)
