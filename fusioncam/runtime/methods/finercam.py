"""FinerCAM: Grad-CAM of a weighted score difference between the explained class and its most similar classes.

As pytorch-grad-cam 1.5.7 (FinerCAM with base_method=GradCAM and FinerWeightedTarget): the comparison classes of an
image are the COMPARISONS classes whose logits are closest to the explained class's logit, and the explained score is

    T = sum_c p_c (y_t - alpha * y_c) / (sum_c p_c + 1e-9),    p = softmax(y),

whose gradient dT/dA = sum_j (dT/dy_j) * dy_j/dA. The explain graph gives dy_j/dA for one class per row, so three
more explain passes of the N images (one per comparison rank) give the comparison classes' gradients; dT/dy_j is
computed in closed form from the logits. For any other class j, dT/dy_j = -1e-9 p_j T / D (D = sum_c p_c + 1e-9),
through the softmax's normaliser: relative to the kept terms it is about 1e-9 / D and is left out (pytorch-grad-cam's
autograd includes it). Cost: four explain passes of N rows, no masked forward.

On a segmentation bundle (pytorch-grad-cam's FinerCAM has no segmentation form; this is fusioncam's) the class
scores y_l are the region means S_l / sum_ij w of the region scores S_l = sum_ij w(i, j) y_l(i, j), with the
explained region's w for every class, and the comparison passes keep that w (comparison_passes.py).
"""

from __future__ import annotations

from ...errors import InputError
from ...graph_names import GRADIENTS, REGION_WEIGHTS
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


def class_scores(engine: Engine):
    """[N, classes] float64: a classifier's logits, or a segmentation's region means S_l / sum_ij w (logit-sized
    scores for the similarity and the softmax; the explain graph's G = dS/dA is 1 / sum_ij w times their gradient,
    a positive factor per image that the map's normalisation removes)."""
    xp = engine.xp
    logits = xp.asarray(engine.logits, dtype=xp.float64)
    if engine.region_weights is None:
        return logits
    weights = xp.asarray(engine.region_weights, dtype=xp.float64)
    area = weights.sum(axis=(1, 2))
    return xp.einsum("nlhw,nhw->nl", logits, weights) / xp.where(area > 0, area, 1.0)[:, None]


def check_same_region(engine: Engine, other: dict) -> None:
    """A comparison pass of a segmentation bundle must have explained the same region w as the main pass."""
    if engine.region_weights is None:
        return
    xp = engine.xp
    if float(xp.abs(xp.asarray(other[REGION_WEIGHTS]) - engine.region_weights).max()) > 1e-6:
        raise InputError("finercam: the predicted region could not be held fixed for the comparison classes (the "
                         "model's output size does not divide its input size); give the region explicitly "
                         "(regions='all', a box or a mask)")


def finercam(engine: Engine) -> MethodOutput:
    """FinerCAM on Grad-CAM: w_k = mean_ij dT/dA_k, map norm(up(relu(sum_k w_k A_k))). Same with compat."""
    if engine.explain_classes is None:
        raise InputError("finercam compares an image's class score with its most similar classes and needs more "
                         "explain passes for those classes, which this bundle's task does not offer; choose another "
                         "method")
    xp, kernels = engine.xp, engine.kernels
    scores = class_scores(engine)
    count = min(COMPARISONS, int(scores.shape[1]) - 1)
    targets = xp.asarray(engine.explained_classes, dtype=xp.int64)
    comparisons = comparison_classes(scores, targets, count)
    d_t, d_c = score_derivatives(scores, targets, comparisons)
    weights = d_t[:, None] * engine.gradcam_weights
    for position in range(count):  # one explain pass of N rows per comparison rank: the main pass's memory
        other = engine.explain_classes(engine.images, xp.ascontiguousarray(comparisons[:, position]))
        check_same_region(engine, other)
        weights = weights + d_c[:, position, None] * kernels.gradcam_weights(other[GRADIENTS])
    return MethodOutput(engine.channel_weighted_map(weights),
                        facts={"comparison_classes": comparisons, "score_derivatives": d_t})
