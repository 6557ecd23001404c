"""ROAD's noisy linear imputation (Rong et al. 2022, as pytorch-grad-cam 1.5.7's NoisyLinearImputer computes it),
vectorised over a batch of images on the host with NumPy/SciPy.

Each removed pixel becomes the weighted mean of its in-image 8 neighbours (1/6 for the 4 edge neighbours, 1/12 for
the 4 diagonal ones, renormalised where the image edge cuts some off): one sparse linear system over all removed
pixels, solved for every channel at once, plus `noise` * a standard normal per removed value. The systems of a batch
are one block-diagonal matrix built from COO index arrays (no per-pixel Python loop) and factorised once by SuperLU.

An image whose every pixel is removed has no known pixel to interpolate from; its system is singular with a zero
right-hand side, and pytorch-grad-cam's spsolve returns 0 there: here such an image is set to 0 (+ noise) directly.

Its cost, measured against pytorch-grad-cam's and against iterative solvers, is in fusioncam/metrics/road.py's
docstring.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sparse
from scipy.sparse.linalg import splu

# (dy, dx, weight): pytorch-grad-cam's neighbors_weights
NEIGHBOUR_WEIGHTS: tuple[tuple[int, int, float], ...] = (
    (1, 1, 1 / 12), (0, 1, 1 / 6), (-1, 1, 1 / 12), (1, -1, 1 / 12),
    (0, -1, 1 / 6), (-1, -1, 1 / 12), (1, 0, 1 / 6), (-1, 0, 1 / 6),
)


def imputed_images(images: np.ndarray, removed: np.ndarray, noise: Sequence[np.ndarray | None] | None = None
                   ) -> np.ndarray:
    """float32 [B, C, H, W]: `images` (float32 [B, C, H, W], host) with the pixels where `removed` (bool [B, H, W])
    is True replaced by their linear imputation. noise[b], when given and not None, is added to image b's imputed
    values: float [C, K_b], K_b = removed[b].sum(), columns in row-major pixel order (pytorch-grad-cam's layout)."""
    images = np.asarray(images, dtype=np.float32)
    batch, channels, height, width = images.shape
    plane = height * width
    flat_removed = removed.reshape(batch, plane)
    counts = flat_removed.sum(axis=1)
    out = images.reshape(batch, channels, plane).copy()
    solvable = (counts > 0) & (counts < plane)
    solved = _solve(images.reshape(batch, channels, plane)[solvable], flat_removed[solvable], height, width)
    for index, values in zip(np.flatnonzero(solvable), solved):
        out[index][:, flat_removed[index]] = values
    for index in np.flatnonzero(counts == plane):  # nothing known: pytorch-grad-cam's singular solve gives 0
        out[index][:] = 0.0
    if noise is not None:
        for index in np.flatnonzero(counts > 0):
            if noise[index] is not None:
                out[index][:, flat_removed[index]] += np.asarray(noise[index], dtype=np.float32)
    return out.reshape(batch, channels, height, width)


def _solve(images: np.ndarray, removed: np.ndarray, height: int, width: int) -> list[np.ndarray]:
    """The imputed values of each image (float32 [C, K_b]); images float32 [B, C, P], removed bool [B, P], every
    image with at least one removed and one known pixel (so each block of the system is non-singular)."""
    batch, channels, plane = images.shape
    if batch == 0:
        return []
    flat = removed.reshape(-1)
    unknown = np.flatnonzero(flat)  # global pixel index b * P + y * W + x of each unknown, in order
    variable = np.full(flat.shape, -1, dtype=np.int64)
    variable[unknown] = np.arange(unknown.size)
    image_of = unknown // plane
    y, x = (unknown % plane) // width, unknown % width
    values = images.transpose(0, 2, 1).reshape(-1, channels).astype(np.float64)  # [B*P, C]
    rhs = np.zeros((unknown.size, channels))
    diagonal = np.zeros(unknown.size)
    rows, cols, weights = [], [], []
    for dy, dx, weight in NEIGHBOUR_WEIGHTS:
        ny, nx = y + dy, x + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        which = np.flatnonzero(inside)
        neighbour = image_of[which] * plane + ny[which] * width + nx[which]
        diagonal[which] += weight
        is_unknown = flat[neighbour]
        rows.append(which[is_unknown])
        cols.append(variable[neighbour[is_unknown]])
        weights.append(np.full(int(is_unknown.sum()), weight))
        known = ~is_unknown
        rhs[which[known]] += weight * values[neighbour[known]]  # each (row, offset) pair occurs once: no repeats
    everything = np.arange(unknown.size)
    matrix = sparse.csc_matrix(
        (np.concatenate([*weights, -diagonal]), (np.concatenate([*rows, everything]), np.concatenate([*cols, everything]))),
        shape=(unknown.size, unknown.size))
    solution = splu(matrix).solve(-rhs)  # [K, C]: sum_j w_ij x_j - (sum_j w_ij) x_i = -sum_known w_ik v_k
    bounds = np.concatenate([[0], np.cumsum(removed.sum(axis=1))])
    return [solution[start:stop].T.astype(np.float32) for start, stop in zip(bounds[:-1], bounds[1:])]


def image_noise_key(image: np.ndarray) -> int:
    """A 64-bit key of one image's float32 bytes: with the seed it fixes the image's noise, so an image gets the same
    noise wherever it sits in a batch or a dataset."""
    digest = hashlib.blake2b(np.ascontiguousarray(image, dtype=np.float32).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def imputation_noise(seed: int, key: int, stream: int, shape: tuple[int, int], scale: float) -> np.ndarray | None:
    """scale * standard normal float32 of `shape` [C, K] from a Generator seeded by (seed, image key, stream), or None
    where scale is 0. `stream` tells apart one image's perturbations (direction and percentile)."""
    if scale == 0:
        return None
    generator = np.random.default_rng([int(seed), key & 0xFFFFFFFF, key >> 32, int(stream)])
    return (scale * generator.standard_normal(shape)).astype(np.float32)
