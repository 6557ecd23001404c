"""Image-space kernels, twice with one interface: `numpy_kernels` (CPU) and `cuda_kernels()` (CuPy, GPU).

Both sets implement the `KernelSet` protocol: the same functions, arguments, docstrings and results; the CUDA
set takes and returns CuPy arrays and is imported only when asked for. A kernel whose array code is the same
on both is written once, in `array_math`, and exported by the numpy and the cuda module alike. Each kernel
module lists its kernels in `__all__`; helpers the runtime does not call (bilinear_weights, channel_percentiles)
stay public in their modules but are not members of the set.
"""

from __future__ import annotations

import functools
from types import ModuleType, SimpleNamespace
from typing import Any, Protocol, runtime_checkable

from fusioncam.errors import DeviceError
from fusioncam.kernels import maps_numpy, masks_numpy, upsample_numpy
from fusioncam.kernels import blend_numpy
from fusioncam.kernels import gaussian_blur_numpy, channel_weights_numpy
from fusioncam.kernels import eigen_numpy

__all__ = ["Array", "KERNEL_NAMES", "KernelSet", "numpy_kernels", "cuda_kernels"]

Array = Any  # numpy.ndarray in the NumPy set, cupy.ndarray in the CUDA set


@runtime_checkable
class KernelSet(Protocol):
    """One backend's kernels: exactly the functions the runtime and the metrics call. Shapes: N images, K channels,
    [h, w] the feature map, [H, W] the image; see the numpy or cuda module of each name for its full contract."""

    def upsample(self, maps: Array, out_hw: tuple[int, int]) -> Array:
        """Bilinear resize of maps [..., h, w] to [..., H, W] float32 (PyTorch's align_corners=False)."""

    def upsampled_min_max(self, acts: Array, out_hw: tuple[int, int]) -> tuple[Array, Array]:
        """Min and max [N, K] float32 of every channel's upsampled map."""

    def write_channel_masked_inputs(self, images: Array, acts: Array, mins: Array, maxs: Array, image_index: Array,
                                    channel_index: Array, out: Array, start: int = 0) -> None:
        """out[start + j] = images[n] * norm(up(acts[n, k])) for (n, k) = (image_index[j], channel_index[j])."""

    def write_map_masked_inputs(self, images: Array, maps: Array, image_index: Array, out: Array,
                                start: int = 0) -> None:
        """out[start + j] = images[image_index[j]] * maps[j] for full-resolution maps [M, H, W]."""

    def weighted_channel_sum(self, acts: Array, weights: Array) -> Array:
        """sum_k weights[n, k] * acts[n, k] -> [N, h, w] float32."""

    def normalize(self, maps: Array) -> Array:
        """Per map [N, H, W]: M - min(M), divided by its max if that max is > 0."""

    def relu_upsample_normalize(self, low: Array, out_hw: tuple[int, int]) -> Array:
        """norm(up(relu(low))) for low-resolution maps [N, h, w] -> [N, H, W]."""

    def percentile_denoise(self, maps: Array, theta: float) -> Array:
        """Per map: values below its theta-th percentile set to 0, then norm."""

    def softmax(self, scores: Array) -> Array:
        """Max-subtracted softmax over the last axis of scores [N, K], float64."""

    def weighted_pair(self, a: Array, b: Array, wa: Array, wb: Array) -> Array:
        """norm(wa * a + wb * b) per image, weights [N]."""

    def similarity_fusion(self, l_dr: Array, l_reg: Array, b_dr: Array, b_reg: Array) -> Array:
        """Fusion-CAM step 3: the similarity-weighted pixel-wise fusion of b_dr * l_dr and b_reg * l_reg."""

    def nonfinite_rows(self, *arrays: Array) -> Array:
        """[N] bool: True for image n where any of the arrays [N, ...] holds NaN or infinity in row n."""

    def write_blended_inputs(self, images: Array, baselines: Array, masks: Array, image_index: Array, out: Array,
                             start: int = 0) -> None:
        """out[start + j] = masks[j] * images[n] + (1 - masks[j]) * baselines[n] for n = image_index[j]."""

    def gradcam_weights(self, grads: Array) -> Array:
        """Grad-CAM's w_k = mean over (i, j) of G_k: [N, K] float64."""

    def gradcam_plus_plus_weights(self, acts: Array, grads: Array) -> Array:
        """Grad-CAM++'s w_k: [N, K] float64."""

    def xgradcam_weights(self, acts: Array, grads: Array) -> Array:
        """XGrad-CAM's w_k: [N, K] float64."""

    def union_gradient_map(self, acts: Array, grads: Array, theta: float) -> Array:
        """Union-CAM's per-channel denoised gradient map at low resolution, [N, h, w] float32."""

    def group_activation_maps(self, acts: Array, weights: Array, groups: int) -> Array:
        """Group-CAM's S_g = relu(sum_{k in g} w_k A_k) per group of consecutive channels, [N, G, h, w]."""

    def write_group_blended_inputs(self, images: Array, blurred: Array, group_maps: Array, mins: Array, maxs: Array,
                                   image_index: Array, group_index: Array, out: Array, start: int = 0) -> None:
        """out[start + j] = M * images[n] + (1 - M) * blurred[n] with M = norm(up(group_maps[n, g]))."""

    def weighted_group_masks(self, group_maps: Array, mins: Array, maxs: Array, scores: Array,
                             out_hw: tuple[int, int]) -> Array:
        """sum_g scores[n, g] * norm(up(group_maps[n, g])) per image, [N, H, W] float32."""

    def gaussian_blurred_images(self, images: Array, ksize: int = 51, sigma: float = 50.0) -> Array:
        """Every channel of images [N, C, H, W] blurred by a ksize x ksize Gaussian of std sigma, float32."""

    def hirescam_map(self, acts: Array, grads: Array) -> Array:
        """HiResCAM's sum_k G_k * A_k -> [N, h, w] float32."""

    def elementwise_gradcam_map(self, acts: Array, grads: Array) -> Array:
        """Grad-CAM element-wise: sum_k relu(G_k * A_k) -> [N, h, w] float32."""

    def layercam_map(self, acts: Array, grads: Array) -> Array:
        """LayerCAM: sum_k relu(G_k) * A_k -> [N, h, w] float32."""

    def first_component_projection(self, maps: Array, center: bool = False) -> Array:
        """Positions of maps [N, K, h, w] projected on their first principal direction (Eigen-CAM), [N, h, w]."""

    def kernel_pca_projection(self, maps: Array, kernel: str = "sigmoid", gamma: float | None = None) -> Array:
        """KPCA-CAM: the first kernel principal component of the channel-centred positions, [N, h, w] float32."""


KERNEL_NAMES: tuple[str, ...] = tuple(name for name, value in vars(KernelSet).items()
                                      if callable(value) and not name.startswith("_"))


def kernel_set(*modules: ModuleType) -> KernelSet:
    """The KernelSet of these modules: each member is the function a module lists in `__all__`. A module may export
    nothing else, and every member must be exported by one module (a mismatch is a programming error)."""
    found = {name: getattr(module, name) for module in modules for name in module.__all__}
    if set(found) != set(KERNEL_NAMES):
        raise TypeError(f"kernel modules export {sorted(set(found) - set(KERNEL_NAMES))} beyond the KernelSet "
                        f"protocol and miss {sorted(set(KERNEL_NAMES) - set(found))}")
    return SimpleNamespace(**{name: found[name] for name in KERNEL_NAMES})


numpy_kernels: KernelSet = kernel_set(upsample_numpy, masks_numpy, maps_numpy, blend_numpy, channel_weights_numpy,
                                      gaussian_blur_numpy, eigen_numpy)


@functools.cache
def cuda_kernels() -> KernelSet:
    """The CuPy kernels; raises DeviceError when CuPy is not installed or sees no CUDA GPU."""
    try:
        import cupy
    except ImportError as exc:
        raise DeviceError(
            f"the CUDA kernels need CuPy, which could not be imported ({exc}); "
            "install the wheel matching your CUDA driver, e.g. pip install cupy-cuda12x or cupy-cuda13x"
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError when no driver or GPU, RuntimeError when libraries are missing
        raise DeviceError(f"CuPy cannot reach a CUDA GPU ({exc}); run on the CPU instead") from exc
    if count == 0:
        raise DeviceError("CuPy sees no CUDA GPU (device count 0); run on the CPU instead")
    from fusioncam.kernels import maps_cuda, masks_cuda, upsample_cuda
    from fusioncam.kernels import blend_cuda
    from fusioncam.kernels import gaussian_blur_cuda, channel_weights_cuda
    from fusioncam.kernels import eigen_cuda

    return kernel_set(upsample_cuda, masks_cuda, maps_cuda, blend_cuda, channel_weights_cuda, gaussian_blur_cuda,
                      eigen_cuda)
