"""ScatterND's gradient rule (reduction none) against torch autograd of a slice assignment: both the overwritten
data and the written updates depend on the input, so both gradient paths are checked."""

from __future__ import annotations

import numpy as np
import torch
from onnx import helper

from tests.support.onnx_graphs import check_against_torch

node = helper.make_node


def test_scatter_nd_gradient_matches_slice_assignment() -> None:
    x = np.random.default_rng(2).standard_normal((3, 4, 5)).astype(np.float32)
    nodes = [node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),  # [C, N, F]: rows 1 and 2 are overwritten
             node("Slice", ["xt", "zero", "two", "zero"], ["head"]),
             node("Tanh", ["head"], ["head_tanh"]), node("Mul", ["head_tanh", "gain"], ["updates"]),
             node("Mul", ["xt", "gain"], ["data"]),
             node("ScatterND", ["data", "rows", "updates"], ["written"]),
             node("Transpose", ["written"], ["y"], perm=[1, 0, 2])]
    inits = {"zero": np.array([0], np.int64), "two": np.array([2], np.int64), "gain": np.array(2.0, np.float32),
             "rows": np.array([[1], [2]], np.int64)}

    def reference(t: torch.Tensor) -> torch.Tensor:
        y = t * 2.0
        y[:, 1:3] = torch.tanh(t[:, 0:2]) * 2.0
        return y

    check_against_torch(nodes, x, reference, inits)
