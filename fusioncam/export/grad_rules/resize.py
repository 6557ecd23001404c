"""Gradient of Resize (nearest and linear modes, 2-D spatial resizing of [N, C, H, W]) through exact matrices.

Both modes are separable: `Y = R_h X R_w^T`, where `R_h` [H_out, H_in] and `R_w` [W_out, W_in] hold each output
row's (column's) interpolation weights. The shapes are static, so the matrices are built at export time from the
ONNX definition of the coordinate transformation, and `dX = R_h^T dY R_w` is two MatMuls. Segmentation heads
(torchvision FCN/DeepLabV3/LRASPP, SegFormer's decoder) upsample with `F.interpolate(mode="bilinear")`, which exports
as Resize(mode="linear", coordinate_transformation_mode="half_pixel" or "pytorch_half_pixel").
"""

from __future__ import annotations

import numpy as np
import onnx

from fusioncam.errors import UnsupportedOpError
from fusioncam.export.grad_context import GradContext, attribute, node_input, node_label
from fusioncam.export.grad_rules.registry import grad_rule

TRANSFORMS = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def source_coordinates(out_size: int, in_size: int, scale: float, transform: str) -> np.ndarray:
    """Input coordinate of every output index along one axis, as ONNX Resize defines it (float64)."""
    i = np.arange(out_size, dtype=np.float64)
    if transform == "half_pixel":
        return (i + 0.5) / scale - 0.5
    if transform == "pytorch_half_pixel":
        return (i + 0.5) / scale - 0.5 if out_size > 1 else np.zeros(out_size)
    if transform == "align_corners":
        return i * (in_size - 1) / (out_size - 1) if out_size > 1 else np.zeros(out_size)
    return i / scale  # asymmetric


def interpolation_matrix(out_size: int, in_size: int, scale: float, mode: str, transform: str,
                         nearest_mode: str = "round_prefer_floor") -> np.ndarray:
    """[out_size, in_size] weights with `y = R x` along one axis (linear: clamped like ONNX Runtime and PyTorch)."""
    x = source_coordinates(out_size, in_size, scale, transform)
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    if mode == "nearest":
        pick = {"round_prefer_floor": np.ceil(x - 0.5), "round_prefer_ceil": np.floor(x + 0.5),
                "floor": np.floor(x), "ceil": np.ceil(x)}[nearest_mode]
        matrix[rows, np.clip(pick, 0, in_size - 1).astype(np.int64)] = 1.0
        return matrix
    x = np.clip(x, 0.0, in_size - 1)
    low = np.floor(x).astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    frac = x - low
    np.add.at(matrix, (rows, low), 1.0 - frac)
    np.add.at(matrix, (rows, high), frac)
    return matrix


def _spatial_scales(ctx: GradContext, node: onnx.NodeProto, in_dims: list, out_dims: list) -> tuple[float, float]:
    """The H and W scales: the `scales` input when given (ONNX uses it as is), else out / in."""
    scales_value = ctx.constant_value(node_input(node, 2)) if node_input(node, 2) else None
    if scales_value is not None and scales_value.size == 4:
        return float(scales_value[2]), float(scales_value[3])
    return out_dims[2] / in_dims[2], out_dims[3] / in_dims[3]


def _check_supported(node: onnx.NodeProto) -> tuple[str, str, str]:
    """(mode, coordinate transform, nearest mode), or UnsupportedOpError for variants without a rule."""
    mode = attribute(node, "mode", "nearest")
    transform = attribute(node, "coordinate_transformation_mode", "half_pixel")
    nearest_mode = attribute(node, "nearest_mode", "round_prefer_floor")
    problem = None
    if mode not in ("nearest", "linear"):
        problem = f"mode '{mode}' (only 'nearest' and 'linear' have a gradient rule)"
    elif transform not in TRANSFORMS:
        problem = f"coordinate_transformation_mode '{transform}' (supported: {', '.join(TRANSFORMS)})"
    elif mode == "nearest" and nearest_mode not in NEAREST_MODES:
        problem = f"nearest_mode '{nearest_mode}'"
    elif attribute(node, "antialias", 0):
        problem = "antialias=1"
    elif attribute(node, "axes") is not None or attribute(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        problem = "the axes / keep_aspect_ratio_policy attributes"
    if problem:
        raise UnsupportedOpError(f"node {node_label(node)} (Resize): no gradient rule for {problem}; re-export the "
                                 f"model with F.interpolate(mode='bilinear' or 'nearest') upsampling")
    return mode, transform, nearest_mode


@grad_rule("Resize")
def resize(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dX = R_h^T dY R_w for a 4-D Resize that keeps N and C (the matrices fixed at export from static shapes)."""
    mode, transform, nearest_mode = _check_supported(node)
    x, y = node.input[0], node.output[0]
    in_dims = ctx.static_shape(x, node, [2, 3])
    out_dims = ctx.static_shape(y, node, [2, 3])
    scales_value = ctx.constant_value(node_input(node, 2)) if node_input(node, 2) else None
    keeps_nc = scales_value is None or scales_value.size != 4 or (scales_value[0] == 1 and scales_value[1] == 1)
    if len(in_dims) != 4 or not keeps_nc or (all(isinstance(d, int) for d in (in_dims[1], out_dims[1]))
                                             and in_dims[1] != out_dims[1]):
        raise UnsupportedOpError(f"node {node_label(node)} (Resize): only resizing the two spatial axes of an "
                                 f"[N, C, H, W] tensor has a gradient rule; got {in_dims} -> {out_dims}")
    scale_h, scale_w = _spatial_scales(ctx, node, in_dims, out_dims)
    dtype = ctx.np_dtype(x)
    rows = interpolation_matrix(out_dims[2], in_dims[2], scale_h, mode, transform, nearest_mode)
    cols = interpolation_matrix(out_dims[3], in_dims[3], scale_w, mode, transform, nearest_mode)
    along_width = ctx.node("MatMul", [dys[0], ctx.const(cols.astype(dtype), hint="resize_cols")])
    return {0: ctx.node("MatMul", [ctx.const(rows.T.astype(dtype), hint="resize_rows_t"), along_width])}
