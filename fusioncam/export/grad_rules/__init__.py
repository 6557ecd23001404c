"""Gradient rules, one small module per op family, all registered in `registry.RULES` by op type."""

from fusioncam.export.grad_rules import (  # noqa: F401  (importing registers the rules)
    activations,
    conv,
    conv_transpose,
    einsum,
    elementwise,
    grid_sample,
    linear,
    normalization,
    pooling,
    quantization,
    reduce,
    reduce_extremes,
    resize,
    roi_align,
    scatter_nd,
    shape_ops,
)
from fusioncam.export.grad_rules.registry import RULES, GradRule, grad_rule, rule_for, supported_ops

__all__ = ["RULES", "GradRule", "grad_rule", "rule_for", "supported_ops"]
