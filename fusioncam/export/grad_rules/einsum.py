"""Gradient of Einsum: each operand's gradient is another Einsum of dy with the other operands.

For `A_i` with subscripts `s_i` in `s_1,...,s_n->o`, dA_i = einsum(`o,s_j (j != i)->s_i`)(dy, A_j...). A subscript
of `s_i` found nowhere else was summed over `A_i` alone: its gradient is the same along that axis, so it is left out
of the Einsum and put back by broadcasting. Repeated subscripts within one operand (diagonals) are refused.
"""

from __future__ import annotations

import re

import onnx

from fusioncam.errors import UnsupportedOpError
from fusioncam.export.grad_context import GradContext, attribute, node_label
from fusioncam.export.grad_rules.registry import grad_rule

ELLIPSIS = "..."


def _tokens(term: str) -> list[str]:
    """Subscripts of one term, '...' as one token."""
    return re.findall(r"\.\.\.|[A-Za-z]", term)


def parse_equation(equation: str) -> tuple[list[list[str]], list[str]]:
    """(input terms, output term) as token lists; an implicit output is every subscript used once, sorted."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = [_tokens(term) for term in lhs.split(",")]
    if arrow:
        return terms, _tokens(rhs)
    counts: dict[str, int] = {}
    for term in terms:
        for token in term:
            counts[token] = counts.get(token, 0) + 1
    once = sorted(token for token, count in counts.items() if count == 1 and token != ELLIPSIS)
    return terms, ([ELLIPSIS] if ELLIPSIS in counts else []) + once


@grad_rule("Einsum", inputs=None)
def einsum(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dA_i = Einsum(dy, the other operands -> s_i), broadcast along subscripts summed over A_i alone."""
    terms, out = parse_equation(attribute(node, "equation"))
    grads = {}
    for i in needs:
        target = terms[i]
        letters = [t for t in target if t != ELLIPSIS]
        if len(set(letters)) != len(letters):
            raise UnsupportedOpError(f"node {node_label(node)} (Einsum): operand {i} repeats a subscript "
                                     f"({''.join(target)}: a diagonal); its gradient is not supported")
        others = [j for j in range(len(terms)) if j != i]
        seen = set(out).union(*(set(terms[j]) for j in others))
        alone = [axis for axis, token in enumerate(target) if token not in seen]
        if any(target[axis] == ELLIPSIS for axis in alone):
            raise UnsupportedOpError(f"node {node_label(node)} (Einsum): operand {i}'s '...' dims are summed away "
                                     "by it alone; its gradient is not supported")
        kept = [token for token in target if token in seen]
        equation = ",".join("".join(term) for term in [out] + [terms[j] for j in others]) + "->" + "".join(kept)
        grad = ctx.node("Einsum", [dys[0]] + [node.input[j] for j in others], {"equation": equation})
        if alone:  # axes after a '...' counted from the end (it stands for any number of dims)
            spread = target.index(ELLIPSIS) if ELLIPSIS in target else len(target)
            axes = [axis if axis < spread else axis - len(target) for axis in alone]
            grad = ctx.node("Expand", [ctx.unsqueeze(grad, axes), ctx.shape_of(node.input[i])])
        grads[i] = grad
    return grads
