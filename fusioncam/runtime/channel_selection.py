"""Fast mode's channel selection: which channels the Score-CAM sweep scores when it may score only k of K.

NumPy and CuPy alike (the array module is the arrays' own); nothing leaves the device.
"""

from __future__ import annotations

from ..kernels.array_math import array_module

# `fusioncam explain --fast` without a K: measured in benchmarks/results/fidelity-*.md (see README, fast mode).
DEFAULT_FAST_CHANNELS = 256


def gradcam_contributions(acts, gradcam_weights):
    """relu(w_k) * mean_ij(A_k): [N, K] float64, each channel's contribution to the Grad-CAM map.

    Why this criterion: Grad-CAM's map is relu(sum_k w_k A_k), so w_k * mean_ij(A_k) is channel k's share of the
    map's mass before that relu, and it costs nothing beyond the explain pass (w_k is computed anyway). A channel
    with a negative weight only takes mass away from the map; its mask tends to lower the target logit, which
    Score-CAM's softmax turns into a small weight, so relu(w_k) ranks it last. The channels kept are those whose
    weighted activation Grad-CAM credits most: the likeliest to carry Score-CAM's softmax weight. It is a
    heuristic (beyond the paper): fast mode is an approximation, measured against exact mode in the benchmark.
    """
    xp = array_module(acts, gradcam_weights)
    means = xp.asarray(acts, dtype=xp.float64).mean(axis=(2, 3))
    return xp.maximum(xp.asarray(gradcam_weights, dtype=xp.float64), 0) * means


def top_channels(contributions, k: int):
    """[N, K] bool: the k largest contributions of each row; among equal values the lower channel index wins."""
    xp = array_module(contributions)
    count = int(contributions.shape[1])
    kth = xp.partition(contributions, count - k, axis=1)[:, count - k : count - k + 1]  # each row's k-th largest
    above = contributions > kth
    ties = contributions == kth
    wanted = k - above.sum(axis=1, keepdims=True)  # how many of the tied channels still fit, lowest index first
    return above | (ties & (xp.cumsum(ties, axis=1) <= wanted))

