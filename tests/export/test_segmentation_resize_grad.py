"""The Resize gradient rule (grad_rules/resize.py) against torch autograd, and its interpolation matrices against
ONNX Runtime's own Resize: bilinear and nearest, up and down, sizes and scales, every coordinate transform."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch.nn.functional as F
from onnx import helper

from fusioncam.errors import UnsupportedOpError
from fusioncam.export.grad_rules.resize import interpolation_matrix
from tests.support.onnx_graphs import check_against_torch, gradient_session, make_model

node = helper.make_node
RNG = np.random.default_rng(7)


def _sizes_resize(out_h: int, out_w: int, channels: int, **attrs) -> tuple[list, dict]:
    """A Resize node with a `sizes` input built from Shape(x)[:2] (how torch exports F.interpolate(size=...))."""
    nodes = [node("Shape", ["x"], ["x_shape"]), node("Slice", ["x_shape", "zero", "two"], ["n_c"]),
             node("Concat", ["n_c", "out_hw"], ["sizes"], axis=0),
             node("Resize", ["x", "", "", "sizes"], ["y"], **attrs)]
    return nodes, {"zero": np.array([0], np.int64), "two": np.array([2], np.int64),
                   "out_hw": np.array([out_h, out_w], np.int64)}


TORCH_CASES = {
    # name: (x shape, out size, onnx attrs, torch fn)
    "bilinear_up_x4": ((3, 2, 4, 5), (16, 20), dict(mode="linear", coordinate_transformation_mode="half_pixel"),
                       lambda t: F.interpolate(t, size=(16, 20), mode="bilinear", align_corners=False)),
    "bilinear_up_odd": ((3, 2, 3, 7), (10, 9), dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
                        lambda t: F.interpolate(t, size=(10, 9), mode="bilinear", align_corners=False)),
    "bilinear_down": ((3, 2, 9, 8), (4, 3), dict(mode="linear", coordinate_transformation_mode="half_pixel"),
                      lambda t: F.interpolate(t, size=(4, 3), mode="bilinear", align_corners=False)),
    "bilinear_align_corners": ((3, 2, 4, 5), (9, 7), dict(mode="linear", coordinate_transformation_mode="align_corners"),
                               lambda t: F.interpolate(t, size=(9, 7), mode="bilinear", align_corners=True)),
    "nearest_up": ((3, 2, 3, 4), (9, 10), dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                                                nearest_mode="floor"),
                   lambda t: F.interpolate(t, size=(9, 10), mode="nearest")),
}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_resize_gradient_matches_torch(case: str) -> None:
    x_shape, (out_h, out_w), attrs, fn = TORCH_CASES[case]
    nodes, inits = _sizes_resize(out_h, out_w, x_shape[1], **attrs)
    check_against_torch(nodes, RNG.standard_normal(x_shape).astype(np.float32), fn, initializers=inits, opset=17)


@pytest.mark.parametrize("mode,transform,nearest", [
    ("linear", "half_pixel", "floor"), ("linear", "asymmetric", "floor"), ("linear", "align_corners", "floor"),
    ("nearest", "half_pixel", "round_prefer_floor"), ("nearest", "half_pixel", "round_prefer_ceil"),
    ("nearest", "asymmetric", "ceil"), ("nearest", "pytorch_half_pixel", "floor"),
])
@pytest.mark.parametrize("scales", [(2.5, 0.6), (1.0, 3.0), (0.5, 0.75)])
def test_interpolation_matrices_reproduce_ort_resize(mode: str, transform: str, nearest: str, scales) -> None:
    """R_h X R_w^T equals ORT's Resize output for a `scales` input (the forward the gradient transposes)."""
    x = RNG.standard_normal((1, 2, 6, 8)).astype(np.float32)
    graph = helper.make_graph(
        [node("Resize", ["x", "", "scales"], ["y"], mode=mode, coordinate_transformation_mode=transform,
              nearest_mode=nearest)], "resize",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array([1, 1, *scales], np.float32), "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (want,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    rows = interpolation_matrix(want.shape[2], 6, scales[0], mode, transform, nearest)
    cols = interpolation_matrix(want.shape[3], 8, scales[1], mode, transform, nearest)
    np.testing.assert_allclose(rows @ x[0, 0] @ cols.T, want[0, 0], rtol=1e-5, atol=1e-5)


def test_cubic_resize_is_refused_with_the_node_named() -> None:
    nodes, inits = _sizes_resize(8, 8, 2, mode="cubic")
    model = make_model([*nodes, node("Flatten", ["y"], ["flat"]), node("MatMul", ["flat", "head_w"], ["logits"])],
                       (2, 4, 4), {**inits, "head_w": np.ones((128, 3), np.float32)}, 17)
    with pytest.raises(UnsupportedOpError, match="Resize.*mode 'cubic'"):
        gradient_session(model)
