"""ROAD's noisy linear imputation (Rong et al. 2022, as pytorch-grad-cam 1.5.7's NoisyLinearImputer computes it),
vectorised over a batch of images on the host with NumPy/SciPy.

Each removed pixel becomes the weighted mean of its in-image 8 neighbours (1/6 for the 4 edge neighbours, 1/12 for
the 4 diagonal ones, renormalised where the image edge cuts some off): one sparse linear system over all removed
pixels, solved for every channel at once, plus `noise` * a standard normal per removed value. The systems of a batch
are one block-diagonal matrix built from index arrays (no per-pixel Python loop) and factorised once: as a band by
LAPACK's Cholesky for images up to BANDED_MAX_WIDTH wide, by SuperLU for wider ones (measured in
benchmarks/road_imputation.py; both exact to float64 rounding, the test checks them against each other).

An image whose every pixel is removed has no known pixel to interpolate from; its system is singular with a zero
right-hand side, and pytorch-grad-cam's spsolve returns 0 there (NaN where SuperLU detects the singularity, as on a
13x1 image): here such an image is set to 0 (+ noise) directly.

Its cost, measured against pytorch-grad-cam's and against iterative solvers, is in fusioncam/metrics/road.py's
docstring.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

# (dy, dx, weight): pytorch-grad-cam's neighbors_weights
NEIGHBOUR_WEIGHTS: tuple[tuple[int, int, float], ...] = (
    (1, 1, 1 / 12), (0, 1, 1 / 6), (-1, 1, 1 / 12), (1, -1, 1 / 12),
    (0, -1, 1 / 6), (-1, -1, 1 / 12), (1, 0, 1 / 6), (-1, 0, 1 / 6),
)
BANDED_MAX_WIDTH = 96  # images up to this wide are solved as a band (benchmarks/road_imputation.py; wider: SuperLU)
SOLVE_BYTES = 64 << 20  # about the most memory one solve's matrix takes: a batch is solved in groups of this size


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
    solvable = np.flatnonzero((counts > 0) & (counts < plane))
    group = max(1, SOLVE_BYTES // (plane * (width + 2) * 8))  # the band (or SuperLU's factor) of one image
    for start in range(0, solvable.size, group):
        chosen = solvable[start:start + group]
        solved = _solve(images.reshape(batch, channels, plane)[chosen], flat_removed[chosen], height, width)
        for index, values in zip(chosen, solved):
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
    # Right-hand side on the pixel grid: each pixel's weighted sum of its known in-image neighbours (zero padding
    # outside the image, zero at removed pixels), read at the unknowns; dense shifts, no scattered adds.
    known = np.where(removed[:, None, :], 0.0, images.astype(np.float64)).reshape(batch, channels, height, width)
    padded = np.pad(known, ((0, 0), (0, 0), (1, 1), (1, 1)))
    inside = np.pad(np.ones((height, width)), 1)
    sums = np.zeros((batch, channels, height, width))
    diagonal_grid = np.zeros((height, width))
    for dy, dx, weight in NEIGHBOUR_WEIGHTS:
        sums += weight * padded[:, :, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
        diagonal_grid += weight * inside[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
    rhs = sums.transpose(0, 2, 3, 1).reshape(-1, channels)[unknown]  # [K, C]
    diagonal = diagonal_grid.reshape(-1)[unknown % plane]  # the in-image neighbours' weights
    rows, cols, weights = [], [], []
    for dy, dx, weight in NEIGHBOUR_WEIGHTS:
        ny, nx = y + dy, x + dx
        which = np.flatnonzero((ny >= 0) & (ny < height) & (nx >= 0) & (nx < width))
        neighbour = image_of[which] * plane + ny[which] * width + nx[which]
        is_unknown = flat[neighbour]
        rows.append(which[is_unknown])
        cols.append(variable[neighbour[is_unknown]])
        weights.append(np.full(rows[-1].size, weight))
    rows, cols, weights = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
    solution = _solved(rows, cols, weights, diagonal, rhs, width)
    bounds = np.concatenate([[0], np.cumsum(removed.sum(axis=1))])
    return [solution[start:stop].T.astype(np.float32) for start, stop in zip(bounds[:-1], bounds[1:])]


def _solved(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, diagonal: np.ndarray, rhs: np.ndarray,
            width: int) -> np.ndarray:
    """x [K, C] of (D - W) x = rhs: D the diagonal, W the neighbour weights between unknowns (rows, cols, weights,
    symmetric), i.e. sum_j w_ij x_j - (sum_j w_ij) x_i = -sum_known w_ik v_k for every unknown i. D - W is symmetric
    positive definite (each block has a known pixel). Unknowns in row-major order are at most width + 1 apart from
    their neighbours, so for narrow images the matrix is a band: LAPACK's banded Cholesky on one BLAS thread (more
    threads only wait on each other at this size); wider images go to SuperLU."""
    from scipy import sparse
    from scipy.linalg import cho_solve_banded, cholesky_banded
    from scipy.sparse.linalg import splu

    size = diagonal.size
    if width > BANDED_MAX_WIDTH:
        matrix = sparse.csc_matrix((np.concatenate([-weights, diagonal]),
                                    (np.concatenate([rows, np.arange(size)]), np.concatenate([cols, np.arange(size)]))),
                                   shape=(size, size))
        return splu(matrix).solve(rhs)
    lower = rows > cols
    offsets = rows[lower] - cols[lower]
    band = np.zeros((int(offsets.max(initial=0)) + 1, size))
    band[0] = diagonal
    band[offsets, cols[lower]] = -weights[lower]
    with _one_blas_thread():
        factor = cholesky_banded(band, lower=True, check_finite=False)
        return cho_solve_banded((factor, True), rhs, check_finite=False)


def _one_blas_thread():
    """A context in which BLAS/LAPACK run on one thread (threadpoolctl's controller, made once)."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


_BLAS_CONTROLLER = None


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
