"""The coverage check's forgiveness of ReLU sign flips (benchmarks/relu_sign_flips.py): it accepts gradients that
differ from float64 autograd only because a ReLU input within rounding of zero fell on the other side in ONNX
Runtime's float32 forward, and still rejects a wrong gradient rule and a flip far from zero."""

from __future__ import annotations

import numpy as np
import torch

import fusioncam
from benchmarks.relu_sign_flips import OnnxReluPattern, check_with_onnx_relu_pattern
from fusioncam.export.grad_rules.registry import RULES, GradRule

SIZE = 8
IMAGES = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
TARGETS = np.array([-1, 3], dtype=np.int64)


class HiddenOnTheEdge(torch.nn.Module):
    """Conv target, then a hidden layer whose pre-activations for the first image are float64 zero up to the
    rounding of a float32 bias: each hidden ReLU of that image sits on the edge, so float32 ONNX Runtime and float64
    torch put some of them on different sides."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.hidden = torch.nn.Linear(4, 32)
        self.out = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(32, 10))
        with torch.no_grad():
            pooled = self.head(self.features.double()(torch.from_numpy(IMAGES).double()))[0]
            self.features.float()
            self.hidden.bias.copy_(-(self.hidden.weight.double() @ pooled).float())

    def forward(self, x):
        return self.out(self.hidden(self.head(self.features(x))))


def _check(tmp_path):
    model = HiddenOnTheEdge().eval()
    result = fusioncam.export_torch(model, "features", tmp_path / "bundle", input_size=(SIZE, SIZE))
    return check_with_onnx_relu_pattern(model, "features", result.bundle.path / "explain.onnx", IMAGES, TARGETS,
                                        result.layer.layout)


def test_sign_flips_near_zero_are_forgiven(tmp_path) -> None:
    check = _check(tmp_path)
    assert check.flips >= 1 and check.far_flips == 0 and check.unmatched == 0
    assert check.plain_float64_error > 1e-3  # the flips matter: plain float64 autograd disagrees
    assert check.relative_error < 1e-6  # under ONNX's ReLU pattern the explain graph's gradients are exact
    assert check.passed(1e-4)
    assert f"float32: 0.01 from {check.flips} ReLU sign flip" in check.describe(0.01)


def test_a_wrong_gradient_rule_still_fails(tmp_path, monkeypatch) -> None:
    """Gemm's rule scaled by 1.001: the flips are the same, and the error is caught."""
    right = RULES["Gemm"]

    def wrong(ctx, node, dys, needs):
        return right.fn(ctx, node, [ctx.node("Mul", [dys[0], ctx.scalar(1.001, dys[0])])], needs)

    monkeypatch.setitem(RULES, "Gemm", GradRule(wrong, right.inputs, right.outputs))
    check = _check(tmp_path)
    assert check.flips >= 1
    assert 5e-4 < check.relative_error and not check.passed(1e-4)


def test_a_flip_far_from_zero_is_not_forgiven() -> None:
    """A unit ONNX saw at -1e-4 and torch at +1e-4, in a tensor whose largest value is 2, is a different forward
    (50 times NEAR_ZERO), not rounding; the tensors still match (within MATCH), so the flip is counted."""
    x = torch.tensor([[1e-4, 1.0, -2.0]], dtype=torch.float64)
    pattern = OnnxReluPattern([np.array([[-1e-4, 1.0, -2.0]], dtype=np.float32)])
    with pattern.mode():
        y = torch.relu(x)
    assert pattern.flips == 1 and pattern.far_flips == 1
    assert y.tolist() == [[0.0, 1.0, 0.0]]  # ONNX's pattern is what autograd then sees


def test_an_unmatched_relu_is_counted_and_left_to_torch() -> None:
    pattern = OnnxReluPattern([np.ones((2, 2), dtype=np.float32)])
    with pattern.mode():
        y = torch.nn.functional.relu(torch.tensor([-1.0, 3.0], dtype=torch.float64))
    assert pattern.unmatched == 1 and y.tolist() == [0.0, 3.0]


def test_max_pool_takes_the_onnx_pick_and_counts_ties() -> None:
    """A window whose two largest elements are 1e-9 apart: ONNX's pick (the second) is a tie, autograd sends the
    gradient there; a pick 1e-4 below the maximum (50 times NEAR_ZERO of the scale 2) is a different forward."""
    for runner_up, far in ((2.0 - 1e-9, 0), (2.0 - 1e-4, 1)):
        x = torch.tensor([[[[2.0, runner_up], [0.0, -1.0]]]], dtype=torch.float64, requires_grad=True)
        pattern = OnnxReluPattern([], [np.array([[[[1]]]], dtype=np.int64)])
        with pattern.mode():
            y = torch.nn.functional.max_pool2d(x, 2)
        (grad,) = torch.autograd.grad(y.sum(), x)
        assert pattern.pool_ties == 1 and pattern.far_flips == far and pattern.unmatched == 0
        assert grad.flatten().tolist() == [0.0, 1.0, 0.0, 0.0]
