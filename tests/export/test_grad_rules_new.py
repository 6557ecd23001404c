"""Gradient rules the coverage run asked for (ConvNeXt-V2's GRN, MaxViT's grid attention, MobileViT-V2's GroupNorm),
each against torch autograd for batch sizes 1 and 3 (tests/onnx_graphs.check_against_torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import helper

from fusioncam.errors import UnsupportedOpError
from fusioncam.export.grad_rules.einsum import parse_equation
from tests.support.onnx_graphs import check_against_torch, gradient_session, head_nodes, make_model

node = helper.make_node
RNG = np.random.default_rng(99)


def randn(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("opset", [17, 18])
def test_reduce_l2(keepdims: int, opset: int) -> None:
    x = randn(3, 4, 5, 5)
    x[:, 1] = 0.0  # a channel whose norm is 0: torch's gradient there is 0, not NaN
    if opset >= 18:
        nodes, inits = [node("ReduceL2", ["x", "axes"], ["y"], keepdims=keepdims)], {"axes": np.array([2, 3])}
    else:
        nodes, inits = [node("ReduceL2", ["x"], ["y"], axes=[2, 3], keepdims=keepdims)], {}
    fn = lambda t: torch.linalg.vector_norm(t, dim=(2, 3), keepdim=bool(keepdims))  # noqa: E731
    check_against_torch(nodes, x, fn, inits, opset=opset)


def test_global_response_normalisation() -> None:
    """ConvNeXt-V2's GRN as timm exports it: gx = ||x||_(h,w), nx = gx / (mean_c gx + eps), y = x * nx * g + x."""
    x = randn(3, 4, 5, 5)
    gamma = randn(1, 4, 1, 1)
    nodes = [
        node("ReduceL2", ["x"], ["gx"], axes=[2, 3], keepdims=1),
        node("ReduceMean", ["gx"], ["gm"], axes=[1], keepdims=1),
        node("Add", ["gm", "eps"], ["gme"]),
        node("Div", ["gx", "gme"], ["nx"]),
        node("Mul", ["x", "nx"], ["xn"]),
        node("Mul", ["xn", "gamma"], ["xg"]),
        node("Add", ["xg", "x"], ["y"]),
    ]

    def fn(t):
        gx = torch.linalg.vector_norm(t, dim=(2, 3), keepdim=True)
        return t * (gx / (gx.mean(dim=1, keepdim=True) + 1e-6)) * torch.from_numpy(gamma) + t

    check_against_torch(nodes, x, fn, {"eps": np.array(1e-6, np.float32), "gamma": gamma})


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_sum_square(keepdims: int) -> None:
    nodes = [node("ReduceSumSquare", ["x"], ["y"], axes=[1], keepdims=keepdims)]
    check_against_torch(nodes, randn(3, 4, 6), lambda t: (t * t).sum(dim=1, keepdim=bool(keepdims)))


def test_instance_normalization() -> None:
    x = randn(3, 4, 5, 6)
    scale, bias = randn(4), randn(4)
    nodes = [node("InstanceNormalization", ["x", "s", "b"], ["y"], epsilon=1e-3)]
    fn = lambda t: F.instance_norm(t, weight=torch.from_numpy(scale), bias=torch.from_numpy(bias), eps=1e-3)  # noqa: E731
    check_against_torch(nodes, x, fn, {"s": scale, "b": bias})


def test_group_norm_one_group_as_torch_exports_it() -> None:
    """GroupNorm(1, C) (MobileViT-V2): InstanceNormalization over the reshaped [N, 1, C*h*w], then the affine."""
    x = randn(3, 4, 5, 5)
    weight, bias = randn(4), randn(4)
    nodes = [
        node("Reshape", ["x", "flat_shape"], ["flat"]),
        node("InstanceNormalization", ["flat", "one", "zero"], ["normed"], epsilon=1e-5),
        node("Reshape", ["normed", "back_shape"], ["back"]),
        node("Mul", ["back", "w"], ["scaled"]),
        node("Add", ["scaled", "b"], ["y"]),
    ]
    inits = {"flat_shape": np.array([0, 1, -1]), "back_shape": np.array([0, 4, 5, 5]),
             "one": np.ones(1, np.float32), "zero": np.zeros(1, np.float32),
             "w": weight.reshape(1, 4, 1, 1), "b": bias.reshape(1, 4, 1, 1)}
    fn = lambda t: F.group_norm(t, 1, torch.from_numpy(weight), torch.from_numpy(bias))  # noqa: E731
    check_against_torch(nodes, x, fn, inits)


@pytest.mark.parametrize("equation,other_shape,fn", [
    ("nchw,ck->nkhw", (4, 3), lambda t, w: torch.einsum("nchw,ck->nkhw", t, w)),
    ("nchw,ck->nk", (4, 3), lambda t, w: torch.einsum("nchw,ck->nk", t, w)),  # h, w summed over x alone
    ("...hw,wk->...hk", (5, 2), lambda t, w: torch.einsum("...hw,wk->...hk", t, w)),
    ("nchw,ck", (4, 3), lambda t, w: torch.einsum("nchw,ck", t, w)),  # implicit output: "hknw"
])
def test_einsum_with_a_constant(equation: str, other_shape: tuple, fn) -> None:
    x, w = randn(3, 4, 5, 5), randn(*other_shape)
    nodes = [node("Einsum", ["x", "w"], ["y"], equation=equation)]
    if "->" not in equation:  # the head flattens from axis 1: keep the batch first
        nodes = [node("Einsum", ["x", "w"], ["e"], equation=equation), node("Transpose", ["e"], ["y"], perm=[2, 0, 1, 3])]
        check_against_torch(nodes, x, lambda t: fn(t, torch.from_numpy(w)).permute(2, 0, 1, 3), {"w": w})
        return
    check_against_torch(nodes, x, lambda t: fn(t, torch.from_numpy(w)), {"w": w})


def test_einsum_attention_both_operands_depend_on_x() -> None:
    """Grid attention's q.k^T and attn.v: both operands come from x, so both gradients add up."""
    x = randn(3, 6, 4)
    nodes = [
        node("Einsum", ["x", "x"], ["scores"], equation="nik,njk->nij"),
        node("Softmax", ["scores"], ["attn"], axis=-1),
        node("Einsum", ["attn", "x"], ["y"], equation="nij,njk->nik"),
    ]
    fn = lambda t: torch.einsum("nij,njk->nik", torch.softmax(torch.einsum("nik,njk->nij", t, t), -1), t)  # noqa: E731
    check_against_torch(nodes, x, fn)


def test_einsum_refuses_a_diagonal() -> None:
    model = make_model([node("Einsum", ["x"], ["d"], equation="nii->ni"), node("Identity", ["d"], ["y"]),
                        *head_nodes("y")], (4, 4), {"head_w": randn(4, 10)})
    with pytest.raises(UnsupportedOpError, match="diagonal"):
        gradient_session(model)


def test_parse_equation_implicit_output() -> None:
    assert parse_equation("ij,jk") == ([["i", "j"], ["j", "k"]], ["i", "k"])
    assert parse_equation("...ij,jk") == ([["...", "i", "j"], ["j", "k"]], ["...", "i", "k"])
