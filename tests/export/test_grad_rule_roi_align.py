"""RoiAlign's gradient rule (mode avg, fixed sampling_ratio) against torchvision.ops.roi_align's autograd: boxes on
several images, partly and wholly outside the map, smaller than a pixel, aligned (half_pixel) and not
(output_half_pixel), and the forward against torchvision too."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torchvision.ops import roi_align

from fusioncam.export.autodiff import differentiate

BOXES = np.array([[0, 1.0, 2.0, 9.0, 7.5], [1, -3.0, -2.0, 5.0, 4.0], [2, 10.0, 6.0, 30.0, 20.0],
                  [0, 4.2, 3.1, 4.6, 3.3], [1, 0.0, 0.0, 12.0, 8.0], [2, 13.0, 9.0, 40.0, 40.0]], np.float32)


def _model(aligned: bool, scale: float, ratio: int, shape) -> onnx.ModelProto:
    transform = "half_pixel" if aligned else "output_half_pixel"
    nodes = [helper.make_node("RoiAlign", ["x", "rois", "batch"], ["y"], mode="avg", output_height=3, output_width=2,
                              sampling_ratio=ratio, spatial_scale=scale, coordinate_transformation_mode=transform)]
    graph = helper.make_graph(
        nodes, "roi_align", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *shape[1:]]),
                             helper.make_tensor_value_info("seed", TensorProto.FLOAT, [len(BOXES), shape[1], 3, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [len(BOXES), shape[1], 3, 2])],
        [numpy_helper.from_array(BOXES[:, 1:].copy(), "rois"),
         numpy_helper.from_array(BOXES[:, 0].astype(np.int64), "batch")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("scale,ratio", [(1.0, 2), (0.5, 1), (0.25, 3)])
def test_roi_align_gradient_matches_torchvision(aligned: bool, scale: float, ratio: int) -> None:
    x = np.random.default_rng(0).standard_normal((3, 4, 7, 9)).astype(np.float32)
    seed = np.random.default_rng(1).standard_normal((len(BOXES), 4, 3, 2)).astype(np.float32)
    model = differentiate(_model(aligned, scale, ratio, x.shape), wrt="x", of="y", seed="seed", grad_name="grad")
    model.graph.output.append(helper.make_tensor_value_info("grad", TensorProto.FLOAT, list(x.shape)))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y, grad = session.run(["y", "grad"], {"x": x, "seed": seed})

    tx = torch.from_numpy(x).requires_grad_(True)
    want = roi_align(tx, torch.from_numpy(BOXES), (3, 2), spatial_scale=scale, sampling_ratio=ratio, aligned=aligned)
    (want_grad,) = torch.autograd.grad((want * torch.from_numpy(seed)).sum(), tx)
    assert np.abs(y - want.detach().numpy()).max() <= 1e-5
    assert np.abs(want_grad.numpy()).max() > 0
    error = np.abs(grad - want_grad.numpy()).max() / np.abs(want_grad.numpy()).max()
    assert error <= 1e-5, f"relative gradient error {error:.2e}"


@pytest.mark.parametrize("live", [[2], [0, 4, 5], []])
def test_roi_align_gradient_with_boxes_whose_gradient_is_zero(live: list[int]) -> None:
    """dY zero for every box but `live` (as in an explain graph: only the explained proposal has a gradient): the
    rule scatters only those boxes and still equals torchvision's autograd; no live box gives a zero gradient."""
    x = np.random.default_rng(0).standard_normal((3, 4, 7, 9)).astype(np.float32)
    seed = np.zeros((len(BOXES), 4, 3, 2), np.float32)
    seed[live] = np.random.default_rng(2).standard_normal((len(live), 4, 3, 2))
    model = differentiate(_model(True, 0.5, 2, x.shape), wrt="x", of="y", seed="seed", grad_name="grad")
    model.graph.output.append(helper.make_tensor_value_info("grad", TensorProto.FLOAT, list(x.shape)))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (grad,) = session.run(["grad"], {"x": x, "seed": seed})

    tx = torch.from_numpy(x).requires_grad_(True)
    want = roi_align(tx, torch.from_numpy(BOXES), (3, 2), spatial_scale=0.5, sampling_ratio=2, aligned=True)
    (want_grad,) = torch.autograd.grad((want * torch.from_numpy(seed)).sum(), tx)
    if not live:
        assert not grad.any()
        return
    assert np.abs(want_grad.numpy()).max() > 0
    error = np.abs(grad - want_grad.numpy()).max() / np.abs(want_grad.numpy()).max()
    assert error <= 1e-5, f"relative gradient error {error:.2e}"
