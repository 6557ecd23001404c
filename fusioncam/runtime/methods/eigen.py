"""Eigen-CAM, EigenGrad-CAM and KPCA-CAM: the first (kernel) principal component of each image's [h*w, K] matrix of
positions, computed on the device (batched eigh: NumPy/LAPACK on the CPU, CuPy/cuSOLVER on CUDA), then
norm(up(relu(.))). No forward beyond the explain pass (Eigen-CAM and KPCA-CAM read only its activations)."""

from __future__ import annotations

from .engine import Engine, MethodOutput

KPCA_KERNEL = "sigmoid"  # pytorch-grad-cam's KPCA_CAM default (scikit-learn's KernelPCA, gamma = 1 / K, coef0 = 1)


def eigencam(engine: Engine) -> MethodOutput:
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): the positions of A projected on A's first right singular vector
    (the paper's O V1, channels not centred), its sign fixed so the projection's larger magnitude is positive (the
    paper leaves the sign open; a ReLU follows). compat="pytorch-grad-cam": channels centred first and the sign NumPy's
    SVD returns, as its get_2d_projection."""
    return MethodOutput(engine.low_resolution_map(engine.arithmetic.eigen_projection(engine.acts, False)))


def eigengradcam(engine: Engine) -> MethodOutput:
    """EigenGrad-CAM (pytorch-grad-cam's own method): Eigen-CAM's projection of G * A, channels centred as
    pytorch-grad-cam does; by default the sign fixed (larger magnitude positive), with compat="pytorch-grad-cam" the
    sign NumPy's SVD returns."""
    products = engine.xp.asarray(engine.grads, dtype=engine.xp.float32) * engine.acts
    return MethodOutput(engine.low_resolution_map(engine.arithmetic.eigen_projection(products, True)))


def kpcacam(engine: Engine) -> MethodOutput:
    """KPCA-CAM (Karmani et al., 2024): the first kernel principal component (sigmoid kernel) of the channel-centred
    positions, as scikit-learn's KernelPCA(n_components=1) gives it (its sign by svd_flip); the same with compat."""
    return MethodOutput(engine.low_resolution_map(engine.kernels.kernel_pca_projection(engine.acts, KPCA_KERNEL)))
