"""GridSample's gradient rule (bilinear, zero padding) against torch autograd of F.grid_sample: with respect to the
sampled map and to a grid computed from the same input (as deformable attention's sampling locations are), points
outside the image included, for align_corners 0 and 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import helper

from tests.support.onnx_graphs import check_against_torch

node = helper.make_node


@pytest.mark.parametrize("align", [0, 1])
def test_grid_sample_gradient_through_the_map_and_the_grid(align: int) -> None:
    x = np.random.default_rng(3).standard_normal((3, 4, 5, 6)).astype(np.float32)
    nodes = [node("Slice", ["x", "zero", "two", "one"], ["xy"]),
             node("Mul", ["xy", "gain"], ["xy_scaled"]), node("Tanh", ["xy_scaled"], ["xy_tanh"]),
             node("Mul", ["xy_tanh", "reach"], ["xy_reach"]),  # some points fall outside [-1, 1]
             node("Transpose", ["xy_reach"], ["grid"], perm=[0, 2, 3, 1]),
             node("GridSample", ["x", "grid"], ["y"], mode="bilinear", padding_mode="zeros", align_corners=align)]
    inits = {"zero": np.array([0], np.int64), "two": np.array([2], np.int64), "one": np.array([1], np.int64),
             "gain": np.array(1.3, np.float32), "reach": np.array(1.2, np.float32)}

    def reference(t: torch.Tensor) -> torch.Tensor:
        grid = (1.2 * torch.tanh(1.3 * t[:, :2])).permute(0, 2, 3, 1)
        return F.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=bool(align))

    check_against_torch(nodes, x, reference, inits)


def test_grid_sample_gradient_with_a_constant_grid_of_another_size() -> None:
    x = np.random.default_rng(4).standard_normal((2, 3, 4, 7)).astype(np.float32)
    grid = np.random.default_rng(5).uniform(-1.3, 1.3, (1, 3, 5, 2)).astype(np.float32)
    nodes = [node("Expand", ["grid_one", "grid_shape"], ["grid"]),
             node("GridSample", ["x", "grid"], ["y"], mode="bilinear", padding_mode="zeros", align_corners=0)]
    inits = {"grid_one": grid, "grid_shape": np.array([1, 1, 1, 1], np.int64)}
    check_against_torch(nodes, x, lambda t: F.grid_sample(t, torch.from_numpy(grid).expand(t.shape[0], -1, -1, -1),
                                                          mode="bilinear", padding_mode="zeros",
                                                          align_corners=False), inits, batches=(1,))
