"""HiResCAM's, Grad-CAM element-wise's and LayerCAM's maps, and the principal-component projections of Eigen-CAM,
EigenGrad-CAM and KPCA-CAM, written once for NumPy and CuPy (as array_math: the array module comes from the arguments).

`eigen_numpy` and `eigen_cuda` export these under the same names, so both KernelSets hold them: on the GPU the
batched eigendecompositions run in CuPy (cuSOLVER), on the CPU in NumPy (LAPACK). A projection is computed from the
smaller Gram matrix of each image's [h*w, K] matrix X (X X^T or X^T X): its top eigenvector gives X v1 = s1 u1, the
projection onto the first right singular vector, without a full SVD.
"""

from __future__ import annotations

from fusioncam.kernels.array_math import array_module

KPCA_KERNELS: tuple[str, ...] = ("sigmoid", "rbf", "poly", "linear", "cosine")


def hirescam_map(acts, grads):
    """HiResCAM's sum_k G_k * A_k (element-wise, no spatial averaging) -> [N, h, w] float32 (float64 sums)."""
    xp = array_module(acts, grads)
    return (xp.asarray(grads, dtype=xp.float64) * xp.asarray(acts, dtype=xp.float64)).sum(axis=1).astype(xp.float32)


def elementwise_gradcam_map(acts, grads):
    """Grad-CAM element-wise: sum_k relu(G_k * A_k) -> [N, h, w] float32 (float64 sums)."""
    xp = array_module(acts, grads)
    products = xp.asarray(grads, dtype=xp.float64) * xp.asarray(acts, dtype=xp.float64)
    return xp.maximum(products, 0.0).sum(axis=1).astype(xp.float32)


def layercam_map(acts, grads):
    """LayerCAM: sum_k relu(G_k) * A_k (each position weighted by its own positive gradient) -> [N, h, w] float32."""
    xp = array_module(acts, grads)
    weights = xp.maximum(xp.asarray(grads, dtype=xp.float64), 0.0)
    return (weights * xp.asarray(acts, dtype=xp.float64)).sum(axis=1).astype(xp.float32)


def position_matrices(maps, center: bool):
    """maps [N, K, h, w] as float64 [N, h*w, K] (one row per position), each channel's mean over the positions
    subtracted when `center`; NaN read as 0 (as pytorch-grad-cam's projections do)."""
    xp = array_module(maps)
    n, k, h, w = maps.shape
    matrices = xp.asarray(maps, dtype=xp.float64).reshape(n, k, h * w).transpose(0, 2, 1)
    matrices = xp.where(xp.isnan(matrices), 0.0, matrices)
    if center:
        matrices = matrices - matrices.mean(axis=1, keepdims=True)
    return matrices


def flip_to_larger_positive(projections):
    """Each projection [N, P] negated where |min| > |max|, so its largest magnitude is positive: the sign rule of
    Seg-Eigen-CAM (eq. 13) and of scikit-learn's svd_flip, which makes a singular vector's sign device-independent."""
    xp = array_module(projections)
    flip = xp.abs(projections.min(axis=1)) > xp.abs(projections.max(axis=1))
    return xp.where(flip[:, None], -projections, projections)


def first_component_projection(maps, center: bool = False):
    """X v1 per image: the positions of maps [N, K, h, w] projected on the first right singular vector of their
    [h*w, K] matrix X (channel-centred when `center`), sign by flip_to_larger_positive -> [N, h, w] float32.

    Eigen-CAM (center=False, the paper's O V1) and EigenGrad-CAM (on G * A). Batched eigh of the smaller Gram matrix:
    X X^T [P, P] gives X v1 = u1 * sqrt(lambda1); X^T X [K, K] gives v1 and then X v1.
    """
    xp = array_module(maps)
    n, k, h, w = maps.shape
    matrices = position_matrices(maps, center)
    if h * w <= k:
        values, vectors = xp.linalg.eigh(matrices @ matrices.transpose(0, 2, 1))
        projections = vectors[:, :, -1] * xp.sqrt(xp.maximum(values[:, -1], 0.0))[:, None]
    else:
        _, vectors = xp.linalg.eigh(matrices.transpose(0, 2, 1) @ matrices)
        projections = (matrices @ vectors[:, :, -1:])[:, :, 0]
    return flip_to_larger_positive(projections).reshape(n, h, w).astype(xp.float32)


def pairwise_kernel(matrices, kernel: str, gamma: float | None, degree: int = 3, coef0: float = 1.0):
    """scikit-learn's pairwise kernels of each image's rows, [N, P, K] -> [N, P, P] float64; gamma=None is 1 / K."""
    xp = array_module(matrices)
    if kernel not in KPCA_KERNELS:
        raise ValueError(f"KPCA kernel {kernel!r} is not available; choose one of {', '.join(KPCA_KERNELS)}")
    gamma = 1.0 / int(matrices.shape[2]) if gamma is None else float(gamma)
    inner = matrices @ matrices.transpose(0, 2, 1)
    if kernel == "linear":
        return inner
    if kernel == "sigmoid":
        return xp.tanh(gamma * inner + coef0)
    if kernel == "poly":
        return (gamma * inner + coef0) ** degree
    squared = xp.einsum("npk,npk->np", matrices, matrices)
    if kernel == "rbf":
        distances = xp.maximum(squared[:, :, None] + squared[:, None, :] - 2 * inner, 0.0)
        return xp.exp(-gamma * distances)
    norms = xp.sqrt(squared)
    norms = xp.where(norms == 0, 1.0, norms)  # scikit-learn's normalize: a zero row stays zero
    return inner / (norms[:, :, None] * norms[:, None, :])


def kernel_pca_projection(maps, kernel: str = "sigmoid", gamma: float | None = None):
    """KPCA-CAM: each image's channel-centred [h*w, K] positions, their kernel matrix centred in feature space
    (scikit-learn's KernelCenterer), its top eigenvector alpha1 scaled by sqrt(lambda1) (KernelPCA(n_components=1)
    .fit_transform), the sign by svd_flip (the largest |alpha1| positive) -> [N, h, w] float32."""
    xp = array_module(maps)
    n, _, h, w = maps.shape
    gram = pairwise_kernel(position_matrices(maps, center=True), kernel, gamma)
    gram = (gram - gram.mean(axis=1, keepdims=True) - gram.mean(axis=2, keepdims=True)
            + gram.mean(axis=(1, 2), keepdims=True))
    gram = (gram + gram.transpose(0, 2, 1)) / 2
    values, vectors = xp.linalg.eigh(gram)
    top = vectors[:, :, -1]
    largest = xp.argmax(xp.abs(top), axis=1)
    signs = xp.sign(xp.take_along_axis(top, largest[:, None], axis=1))
    projections = top * signs * xp.sqrt(xp.maximum(values[:, -1:], 0.0))
    return projections.reshape(n, h, w).astype(xp.float32)
