"""ConvTranspose's gradient rule (a Conv with the same weight, strides, dilations, pads and group) against torch
autograd of F.conv_transpose2d: DBNet's 2x2 stride-2 upsampling, padded, dilated, grouped, output_padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import helper

from fusioncam.errors import UnsupportedOpError
from tests.support.onnx_graphs import check_against_torch, gradient_session, head_nodes, make_model

node = helper.make_node

CASES = {  # name: (kernel, stride, pads (ONNX begin.., end..), dilation, group, output_padding)
    "dbnet_2x2_stride2": ((2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 1, (0, 0)),
    "3x3_stride2_padded": ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, (1, 1)),
    "4x3_stride_2_1_dilated": ((4, 3), (2, 1), (1, 0, 1, 0), (1, 2), 1, (0, 0)),
    "grouped_asymmetric_stride": ((3, 3), (3, 2), (1, 1, 1, 1), (1, 1), 2, (2, 1)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_conv_transpose_gradient_matches_torch(case: str) -> None:
    kernel, stride, pads, dilation, group, out_pad = CASES[case]
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    weight = rng.standard_normal((4, 6 // group, *kernel)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    symmetric = pads[:2] == pads[2:]
    assert symmetric  # torch's conv_transpose2d pads both sides alike; every case here does too
    nodes = [node("Tanh", ["x"], ["t"]),  # the input of ConvTranspose depends on x non-linearly
             node("ConvTranspose", ["t", "w", "b"], ["u"], kernel_shape=list(kernel), strides=list(stride),
                  pads=list(pads), dilations=list(dilation), group=group, output_padding=list(out_pad)),
             node("Sigmoid", ["u"], ["y"])]

    def reference(t: torch.Tensor) -> torch.Tensor:
        u = F.conv_transpose2d(torch.tanh(t), torch.from_numpy(weight), torch.from_numpy(bias), stride=stride,
                               padding=pads[:2], output_padding=out_pad, groups=group, dilation=dilation)
        return torch.sigmoid(u)

    check_against_torch(nodes, x, reference, {"w": weight, "b": bias})


def test_conv_transpose_output_shape_is_refused_by_name() -> None:
    weight = np.ones((2, 2, 2, 2), np.float32)
    nodes = [node("ConvTranspose", ["x", "w"], ["y"], name="up", kernel_shape=[2, 2], strides=[2, 2],
                  output_shape=[6, 6])]
    model = make_model([*nodes, *head_nodes("y")], (2, 3, 3), {"w": weight, "head_w": np.ones((72, 4), np.float32)})
    with pytest.raises(UnsupportedOpError, match="'up'.*output_shape"):
        gradient_session(model)
