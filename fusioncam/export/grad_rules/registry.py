"""The gradient-rule registry: op type -> the function that emits its backward nodes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx

from fusioncam.export.grad_context import GradContext

# fn(ctx, node, dys, needs) -> {input index: gradient tensor name}; dys[i] is the gradient of output i
# (None when nothing downstream needs it); needs is the set of input indices that need a gradient.
RuleFn = Callable[[GradContext, onnx.NodeProto, list, frozenset], dict]


@dataclass(frozen=True)
class GradRule:
    """A rule and the ports it handles: differentiable inputs and outputs (None: all of them)."""

    fn: RuleFn
    inputs: tuple[int, ...] | None = (0,)
    outputs: tuple[int, ...] | None = (0,)


RULES: dict[str, GradRule] = {}


def grad_rule(*op_types: str, inputs: tuple[int, ...] | None = (0,),
              outputs: tuple[int, ...] | None = (0,)) -> Callable[[RuleFn], RuleFn]:
    """Decorator registering `fn` as the gradient rule of each op in `op_types`."""
    def register(fn: RuleFn) -> RuleFn:
        """Record `fn` under every op type and hand it back unchanged."""
        for op_type in op_types:
            RULES[op_type] = GradRule(fn, inputs, outputs)
        return fn
    return register


def rule_for(op_type: str) -> GradRule | None:
    """The rule registered for `op_type`, or None."""
    return RULES.get(op_type)


def supported_ops() -> list[str]:
    """Sorted op types that have a gradient rule."""
    return sorted(RULES)
