"""The INT8 scorer (export int8_scorer=True, Explainer(precision="int8")): a QDQ graph with per-channel int8 weights,
recorded in the manifest with its hash, calibrated on the images asked for; the explainer's scorer runs are the INT8
graph's (checked against ONNX Runtime running the file directly), the explain pass stays float32, and the maps stay
close to float32's."""

import json

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")

import fusioncam  # noqa: E402
from fusioncam.bundle import SCORER_GRAPH_INT8, load_bundle  # noqa: E402
from fusioncam.cli.main import main  # noqa: E402
from fusioncam.errors import InputError  # noqa: E402
from fusioncam.export.int8_scorer import CALIBRATION_METADATA  # noqa: E402
from fusioncam.hashing import file_sha256  # noqa: E402
from tests.support.small_cnn import SmallNet, images  # noqa: E402

SIZE = (32, 32)


def _model():
    torch.manual_seed(0)
    return SmallNet().eval()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "small.fcam"
    return fusioncam.export_torch(_model(), "features.2", out, input_size=SIZE, int8_scorer=True).bundle


def _scales(path) -> dict[str, np.ndarray]:
    """The scale of each weight DequantizeLinear (its input an initializer) of a QDQ graph."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {node.input[0]: inits[node.input[1]] for node in model.graph.node
            if node.op_type == "DequantizeLinear" and node.input[0] in inits and inits[node.input[0]].dtype == np.int8}


def test_the_bundle_records_a_per_channel_qdq_int8_scorer(bundle):
    path = bundle.scorer_int8_path
    assert path is not None and path.name == SCORER_GRAPH_INT8
    assert bundle.manifest.files[SCORER_GRAPH_INT8] == file_sha256(path)
    assert load_bundle(bundle.path).scorer_int8_path == path  # verified on load, hash included
    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    conv_scales = [scale for scale in _scales(path).values() if scale.ndim == 1]
    # one scale per output channel: the linear head's 5 classes and both convolutions' 8 and 16 channels
    assert sorted(len(scale) for scale in conv_scales) == [5, 8, 16]
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    assert "5 sample photos" in metadata[CALIBRATION_METADATA]


def test_the_explainer_scores_with_the_int8_graph_and_explains_with_float32(bundle):
    x = images(3, SIZE[0], seed=4)
    # int8_rescore=0 (the default, named so that this test keeps checking an all-INT8 sweep)
    int8 = fusioncam.Explainer(bundle, device="cpu", precision="int8", int8_rescore=0)
    exact = fusioncam.Explainer(bundle, device="cpu")
    direct = ort.InferenceSession(str(bundle.scorer_int8_path), providers=["CPUExecutionProvider"])
    want = direct.run(None, {"input": x})[0]
    got = np.asarray(int8.predict(x))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    float_logits = np.asarray(exact.predict(x))
    relative = np.abs(got - float_logits).max() / np.abs(float_logits).max()
    assert 0 < relative < 0.05  # quantized (not the float graph), and close to it
    a, b = exact.explain(x, methods=("gradcam", "scorecam", "fusion")), int8.explain(x, methods=("gradcam", "scorecam", "fusion"))
    np.testing.assert_array_equal(a.gradcam, b.gradcam)  # the explain pass is the float32 graph in both
    for i in range(len(x)):
        assert np.corrcoef(a.scorecam[i].ravel(), b.scorecam[i].ravel())[0, 1] > 0.98
        assert np.corrcoef(a.fusion[i].ravel(), b.fusion[i].ravel())[0, 1] > 0.98
    assert not np.array_equal(a.scorecam, b.scorecam)


@pytest.mark.slow  # two exports
def test_calibration_images_set_the_activation_ranges(bundle, tmp_path):
    folder = tmp_path / "calibration"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):  # dim, low-contrast images: smaller activation ranges than the sample photos
        cv2.imwrite(str(folder / f"dim{i}.png"), rng.integers(100, 130, size=(40, 40, 3), dtype=np.uint8))
    out = tmp_path / "calibrated.fcam"
    calibrated = fusioncam.export_torch(_model(), "features.2", out, input_size=SIZE, int8_scorer=True,
                                        calibration=folder).bundle
    metadata = {e.key: e.value for e in onnx.load(str(calibrated.scorer_int8_path)).metadata_props}
    assert "2 image file(s)" in metadata[CALIBRATION_METADATA]

    def activation_scales(path):
        model = onnx.load(str(path))
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        return [float(inits[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"
                and n.input[1] in inits and inits[n.input[1]].ndim == 0]

    dim, photos = activation_scales(calibrated.scorer_int8_path), activation_scales(bundle.scorer_int8_path)
    assert len(dim) == len(photos) and sum(d < p for d, p in zip(dim, photos)) > len(dim) // 2


def test_precision_int8_without_an_int8_scorer_says_how_to_export_one(tmp_path):
    plain = fusioncam.export_torch(_model(), "features.2", tmp_path / "plain.fcam", input_size=SIZE).bundle
    with pytest.raises(InputError, match="--int8-scorer"):
        fusioncam.Explainer(plain, device="cpu", precision="int8")


@pytest.mark.slow  # an ONNX export and a bundle export
def test_cli_export_int8_scorer_and_its_calibration_flag(tmp_path, capsys):
    onnx_path = tmp_path / "small.onnx"
    torch.onnx.export(_model(), (torch.zeros(1, 3, *SIZE),), str(onnx_path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    assert main(["export", str(onnx_path), "--out", str(tmp_path / "a.fcam"), "--calibration", str(tmp_path)]) == 2
    assert "add --int8-scorer" in capsys.readouterr().err
    assert main(["export", str(onnx_path), "--out", str(tmp_path / "b.fcam"), "--int8-scorer"]) == 0
    manifest = json.loads((tmp_path / "b.fcam" / "manifest.json").read_text())
    assert SCORER_GRAPH_INT8 in manifest["files"]
