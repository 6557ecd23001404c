"""Int8Settings (export/int8_scorer.py): each setting changes the quantized scorer the way it says, checked on the
graph ONNX Runtime's quantizer writes (scales, zero points, which weights stay float) and on its logits."""

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")

from fusioncam.errors import InputError  # noqa: E402
from fusioncam.export.int8_scorer import CALIBRATION_METADATA, Int8Settings, int8_scorer  # noqa: E402
from tests.support.small_cnn import images  # noqa: E402

SIZE = 32


class DepthwiseNet(torch.nn.Module):
    """A stem convolution, a depthwise and a pointwise one (MobileNet's pattern), pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU6(),
            torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.ReLU6(),
            torch.nn.Conv2d(8, 16, 1), torch.nn.ReLU6(),
        )
        self.head = torch.nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def scorer() -> onnx.ModelProto:
    """DepthwiseNet (seeded) as an ONNX scorer: input `input` [n,3,32,32], logits [n,5]."""
    torch.manual_seed(0)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(DepthwiseNet().eval(), (torch.zeros(1, 3, SIZE, SIZE),), buffer, dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    return onnx.load_from_string(buffer.getvalue())


CALIBRATION = images(5, SIZE, seed=3)  # five images: MinMax runs batches of 4 and 1, the histograms one by one


def _quantized(scorer, settings: Int8Settings) -> onnx.ModelProto:
    return onnx.load_from_string(int8_scorer(scorer, CALIBRATION, "five noise images", "test model", settings))


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _activation_quantizers(model: onnx.ModelProto) -> dict[str, tuple[float, np.ndarray]]:
    """tensor -> (scale, zero point) of each per-tensor QuantizeLinear (the activations; weights are stored
    quantized, with no QuantizeLinear)."""
    inits = _constants(model)
    return {node.input[0]: (float(inits[node.input[1]]), inits[node.input[2]]) for node in model.graph.node
            if node.op_type == "QuantizeLinear" and inits[node.input[1]].ndim == 0}


def _float_weight_consumers(model: onnx.ModelProto) -> set[str]:
    """Conv/Gemm nodes whose weight is a float initializer (not dequantized from int8)."""
    inits = _constants(model)
    return {node.name for node in model.graph.node if node.op_type in ("Conv", "Gemm")
            and node.input[1] in inits and inits[node.input[1]].dtype == np.float32}


def _logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


@pytest.mark.slow  # quantizes the scorer (ONNX Runtime's calibration)
def test_percentile_ranges_lie_inside_the_min_max_ranges(scorer):
    minmax = _quantized(scorer, Int8Settings())
    percentile = _quantized(scorer, Int8Settings(method="Percentile", percentile=99.9))
    a, b = _activation_quantizers(minmax), _activation_quantizers(percentile)
    assert a.keys() == b.keys() and len(a) >= 4
    assert all(b[name][0] <= a[name][0] * (1 + 1e-6) for name in a)
    assert sum(b[name][0] < a[name][0] * 0.99 for name in a) >= len(a) // 2  # clipped, not the same ranges
    x = images(4, SIZE, seed=9)
    float_logits = _logits(scorer, x)
    for model in (minmax, percentile):
        assert np.abs(_logits(model, x) - float_logits).max() < 0.1 * np.abs(float_logits).max()


@pytest.mark.slow  # quantizes the scorer (ONNX Runtime's calibration)
def test_symmetric_activations_are_int8_with_zero_point_zero(scorer):
    quantizers = _activation_quantizers(_quantized(scorer, Int8Settings(symmetric_activations=True)))
    assert quantizers and all(zp.dtype == np.int8 and int(zp) == 0 for _, zp in quantizers.values())
    default = _activation_quantizers(_quantized(scorer, Int8Settings()))
    assert all(zp.dtype == np.uint8 for _, zp in default.values())


@pytest.mark.slow  # quantizes the scorer (ONNX Runtime's calibration)
def test_float_nodes_keep_the_named_groups_float32(scorer):
    convs = [node for node in scorer.graph.node if node.op_type == "Conv"]
    depthwise = {node.name for node in convs if any(a.name == "group" and a.i > 1 for a in node.attribute)}
    gemm = {node.name for node in scorer.graph.node if node.op_type == "Gemm"}
    assert len(depthwise) == 1 and len(gemm) == 1
    assert _float_weight_consumers(_quantized(scorer, Int8Settings())) == set()
    kept = _quantized(scorer, Int8Settings(float_nodes=("depthwise", "classifier")))
    assert _float_weight_consumers(kept) == depthwise | gemm
    first = _quantized(scorer, Int8Settings(float_nodes=("first_conv",)))
    assert _float_weight_consumers(first) == {convs[0].name}


@pytest.mark.slow  # quantizes the scorer (ONNX Runtime's calibration)
def test_per_tensor_weights_have_one_scale_and_reduce_range_seven_bits(scorer):
    inits = _constants(_quantized(scorer, Int8Settings(per_channel=False, reduce_range=True)))
    weights = [array for array in inits.values() if array.dtype == np.int8 and array.ndim >= 2]
    assert weights and all(np.abs(w.astype(int)).max() <= 64 for w in weights)  # 7-bit: [-64, 64]
    model = _quantized(scorer, Int8Settings(per_channel=False, reduce_range=True))
    scales = [_constants(model)[node.input[1]] for node in model.graph.node if node.op_type == "DequantizeLinear"
              and _constants(model).get(node.input[0]) is not None and _constants(model)[node.input[0]].ndim >= 2]
    assert scales and all(np.ndim(scale) == 0 for scale in scales)


@pytest.mark.slow  # quantizes the scorer (ONNX Runtime's calibration)
def test_the_metadata_says_how_it_was_quantized(scorer):
    model = _quantized(scorer, Int8Settings(method="Percentile", percentile=99.99, float_nodes=("classifier",)))
    text = {entry.key: entry.value for entry in model.metadata_props}[CALIBRATION_METADATA]
    assert text.startswith("Percentile 99.99 ranges, per-channel, uint8 activations, float32 classifier, calibrated on "
                           "five noise images")


@pytest.mark.parametrize("settings, message", [
    (Int8Settings(method="KL"), "'KL' is not a calibration method"),
    (Int8Settings(method="Percentile", percentile=101), "percentile must be in \\(50, 100\\]; got 101"),
    (Int8Settings(float_nodes=("head",)), "unknown group\\(s\\) head; choose from first_conv, depthwise, classifier"),
])
def test_bad_settings_are_refused_by_name(settings, message):
    with pytest.raises(InputError, match=message):  # before any quantization: no model needed
        int8_scorer(onnx.ModelProto(), CALIBRATION, "five noise images", "test model", settings)


@pytest.mark.slow  # quantizes the scorer (ONNX Runtime's calibration)
def test_float_node_prefixes_keep_exactly_those_nodes_float32(scorer):
    """The nodes named by a prefix keep float32 weights in the quantized graph (so ONNX Runtime runs them as float
    convolutions); every other convolution still reads dequantized int8 weights."""
    convs = [node.name for node in scorer.graph.node if node.op_type == "Conv"]
    prefix = convs[1].rsplit("/", 1)[0] + "/"  # the depthwise convolution's module, e.g. "/features/features.2/"
    kept = _quantized(scorer, Int8Settings(float_node_prefixes=(prefix,)))
    matched = {node.name for node in kept.graph.node if node.name.startswith(prefix) and node.op_type == "Conv"}
    assert matched == {convs[1]}
    assert _float_weight_consumers(kept) == matched
    dequantized = {out for node in kept.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    node = next(node for node in kept.graph.node if node.name == convs[1])
    assert not set(node.input[1:]) & dequantized  # weight and bias float32 (its input is a float tensor either way)
    for other in (n for n in kept.graph.node if n.op_type == "Conv" and n.name != convs[1]):
        assert other.input[1] in dequantized
    assert "float32 nodes " + prefix + "*" in {e.key: e.value for e in kept.metadata_props}[CALIBRATION_METADATA]


def test_a_float_node_prefix_no_node_has_is_refused(scorer):
    with pytest.raises(InputError, match="no node of test model's scorer starts with '/nowhere/'"):
        _quantized(scorer, Int8Settings(float_node_prefixes=("/nowhere/",)))
