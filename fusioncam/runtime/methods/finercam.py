"""FinerCAM: Grad-CAM of a weighted score difference between the explained class and its most similar classes.

As pytorch-grad-cam 1.5.7 (FinerCAM with base_method=GradCAM and FinerWeightedTarget): the comparison classes of an
image are the COMPARISONS classes whose logits are closest to the explained class's logit, and the explained score is

    T = sum_c p_c (y_t - alpha * y_c) / (sum_c p_c + 1e-9),    p = softmax(y),

whose gradient dT/dA = sum_j (dT/dy_j) * dy_j/dA. The explain graph gives dy_j/dA for one class per row, so three
more explain passes of the N images (one per comparison rank) give the comparison classes' gradients; dT/dy_j is
computed in closed form from the logits. For any other class j, dT/dy_j = -1e-9 p_j T / D (D = sum_c p_c + 1e-9),
through the softmax's normaliser: relative to the kept terms it is about 1e-9 / D and is left out (pytorch-grad-cam's
autograd includes it). Cost: four explain passes of N rows, no masked forward.
"""

from __future__ import annotations

from ...errors import InputError
from ...graph_names import GRADIENTS
from ...kernels.array_math import array_module
from .engine import Engine, MethodOutput

COMPARISONS = 3  # pytorch-grad-cam's default comparison_categories [1, 2, 3] of the classes sorted by similarity
ALPHA = 1.0  # the comparison strength
EPSILON = 1e-9  # FinerWeightedTarget's denominator term


def comparison_classes(logits, targets, count: int):
    """[N, count] int64: per image, the `count` classes other than its target whose logits are nearest the target's
    logit, nearest first (pytorch-grad-cam's argsort of |y - y_t|, positions 1 .. count)."""
    xp = array_module(logits)
    logits = xp.asarray(logits, dtype=xp.float64)
    rows = xp.arange(logits.shape[0])
    distance = xp.abs(logits - logits[rows, targets][:, None])
    distance[rows, targets] = -1.0  # the target itself sorts first, even against a tie
    return xp.argsort(distance, axis=1, kind="stable")[:, 1:1 + count].astype(xp.int64)


def score_derivatives(logits, targets, comparisons, alpha: float = ALPHA):
    """dT/dy_t [N] and dT/dy_c [N, M] of the weighted difference T (module docstring), float64, in closed form."""
    xp = array_module(logits)
    logits = xp.asarray(logits, dtype=xp.float64)
    shifted = xp.exp(logits - logits.max(axis=1, keepdims=True))
    p = shifted / shifted.sum(axis=1, keepdims=True)
    rows = xp.arange(logits.shape[0])
    y_t, p_t = logits[rows, targets], p[rows, targets]
    y_c, p_c = xp.take_along_axis(logits, comparisons, axis=1), xp.take_along_axis(p, comparisons, axis=1)
    numerator = (p_c * (y_t[:, None] - alpha * y_c)).sum(axis=1)
    mass = p_c.sum(axis=1)
    denominator = mass + EPSILON
    # dp_c/dy_j = p_c (delta_cj - p_j): the numerator's and the denominator's derivatives for j = t and j = c
    d_num_t = mass - p_t * numerator
    d_den_t = -p_t * mass
    d_num_c = p_c * (y_t[:, None] - alpha * y_c) - p_c * numerator[:, None] - alpha * p_c
    d_den_c = p_c - p_c * mass[:, None]
    squared = denominator * denominator
    d_t = (d_num_t * denominator - numerator * d_den_t) / squared
    d_c = (d_num_c * denominator[:, None] - numerator[:, None] * d_den_c) / squared[:, None]
    return d_t, d_c


def finercam(engine: Engine) -> MethodOutput:
    """FinerCAM on Grad-CAM: w_k = mean_ij dT/dA_k, map norm(up(relu(sum_k w_k A_k))). Same with compat."""
    if engine.explain_classes is None:
        raise InputError("finercam compares an image's class scores with its most similar classes; it needs a "
                         "classifier bundle (this bundle explains regions of a segmentation); choose another method")
    xp, kernels = engine.xp, engine.kernels
    classes = int(engine.logits.shape[1])
    count = min(COMPARISONS, classes - 1)
    targets = xp.asarray(engine.targets, dtype=xp.int64)
    comparisons = comparison_classes(engine.logits, targets, count)
    d_t, d_c = score_derivatives(engine.logits, targets, comparisons)
    weights = d_t[:, None] * engine.gradcam_weights
    for position in range(count):  # one explain pass of N rows per comparison rank: the main pass's memory
        other = engine.explain_classes(engine.images, xp.ascontiguousarray(comparisons[:, position]))
        weights = weights + d_c[:, position, None] * kernels.gradcam_weights(other[GRADIENTS])
    return MethodOutput(engine.channel_weighted_map(weights),
                        facts={"comparison_classes": comparisons, "score_derivatives": d_t})
