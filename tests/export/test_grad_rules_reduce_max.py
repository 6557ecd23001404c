"""ReduceMax / ReduceMin gradients against torch autograd, ties included.

Without ties every convention agrees; with ties the rule matches the torch op the graph came from: torch.amax/amin
split the gradient evenly among tied elements, torch.max(x, dim)/min(x, dim) (exported with an ArgMax/ArgMin beside
the ReduceMax/ReduceMin) send it to the first extreme along the axis.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from tests.support.onnx_graphs import check_against_torch

node = helper.make_node
RNG = np.random.default_rng(7)


def randn(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def tied(*shape: int) -> np.ndarray:
    """Small integers: every reduced slice has ties at its maximum and minimum."""
    return RNG.integers(-2, 3, size=shape).astype(np.float32)


def reduce_node(op: str, axes: list[int], keepdims: int, opset: int, out: str = "y") -> tuple[list, dict]:
    """The Reduce node with its axes as an attribute (opset < 18) or a constant input (opset 18)."""
    if opset >= 18:
        return [node(op, ["x", "axes"], [out], keepdims=keepdims)], {"axes": np.array(axes, np.int64)}
    return [node(op, ["x"], [out], axes=axes, keepdims=keepdims)], {}


@pytest.mark.parametrize("op, torch_fn", [("ReduceMax", torch.amax), ("ReduceMin", torch.amin)])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("axes", [[1], [2, 3]])
def test_reduce_extreme_splits_ties_evenly_like_amax(op, torch_fn, keepdims: int, opset: int, axes: list[int]) -> None:
    x = tied(3, 4, 3, 5)
    assert (x == x.max(axis=1, keepdims=True)).sum(axis=1).max() > 1  # the data really has ties
    nodes, inits = reduce_node(op, axes, keepdims, opset)
    check_against_torch(nodes, x, lambda t: torch_fn(t, dim=tuple(axes), keepdim=bool(keepdims)), inits, opset=opset)


@pytest.mark.parametrize("op, torch_fn", [("ReduceMax", torch.amax), ("ReduceMin", torch.amin)])
def test_reduce_extreme_over_every_axis(op, torch_fn) -> None:
    """No axes: the whole per-sample tensor and the batch reduce to one value (torch.amax over all dims)."""
    x = randn(2, 3, 4)
    nodes = [node(op, ["x"], ["m"], keepdims=1), node("Mul", ["x", "m"], ["y"])]
    check_against_torch(nodes, x, lambda t: t * torch_fn(t, dim=(0, 1, 2), keepdim=True), batches=(1, 2))


@pytest.mark.parametrize("op, index_op, torch_fn", [("ReduceMax", "ArgMax", torch.max), ("ReduceMin", "ArgMin", torch.min)])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_extreme_with_its_arg_takes_the_first_like_max_dim(op, index_op, torch_fn, keepdims: int) -> None:
    """torch.max(x, dim) as the exporters write it: ReduceMax + ArgMax on the same axis (VOLO's auxiliary head)."""
    x = tied(3, 6, 4)
    nodes, inits = reduce_node(op, [1], keepdims, 17)
    nodes.append(node(index_op, ["x"], ["index"], axis=1, keepdims=keepdims))
    check_against_torch(nodes, x, lambda t: torch_fn(t, dim=1, keepdim=bool(keepdims))[0], inits)


def test_an_arg_along_another_axis_does_not_change_the_tie_rule() -> None:
    x = tied(3, 6, 4)
    nodes, inits = reduce_node("ReduceMax", [1], 1, 17)
    nodes.append(node("ArgMax", ["x"], ["index"], axis=2, keepdims=1))
    check_against_torch(nodes, x, lambda t: torch.amax(t, dim=1, keepdim=True), inits)


def test_max_over_tokens_then_gather_of_argmax() -> None:
    """A token-max head that also gathers the arg-max token's features: both paths' gradients add up as in torch."""
    x = randn(3, 5, 4)
    nodes = [
        node("ReduceMax", ["x"], ["m"], axes=[1], keepdims=0),
        node("ArgMax", ["x"], ["index"], axis=1, keepdims=1),
        node("GatherElements", ["x", "index"], ["picked"], axis=1),
        node("Squeeze", ["picked", "one"], ["picked_2d"]),
        node("Add", ["m", "picked_2d"], ["y"]),
    ]

    def fn(t):
        values, index = torch.max(t, dim=1)
        return values + torch.gather(t, 1, index.unsqueeze(1)).squeeze(1)

    check_against_torch(nodes, x, fn, {"one": np.array([1], np.int64)})


def test_dynamo_metadata_of_max_dim_takes_the_first() -> None:
    """The dynamo exporter keeps only the ReduceMax of `x.max(1)[0]` and names `aten.max.dim` in its metadata."""
    x = tied(3, 6, 4)
    nodes, inits = reduce_node("ReduceMax", [1], 0, 17)
    helper.set_metadata_props(nodes[0], {
        "pkg.torch.onnx.name_scopes": "['', 'model', 'max_1']",
        "pkg.torch.onnx.class_hierarchy": "['fusioncam.export.torch_export.features_wrapper.<locals>.Wrapper', "
                                          "'timm.models.volo.VOLO', 'aten.max.dim']",
    })
    check_against_torch(nodes, x, lambda t: torch.max(t, dim=1)[0], inits)
