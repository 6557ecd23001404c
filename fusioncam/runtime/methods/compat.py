"""The `compat` option: whose arithmetic Grad-CAM++ and Score-CAM follow where implementations disagree.

By default (compat=None) fusioncam follows the methods' authors' code: Grad-CAM++'s alpha has no epsilon (0 where
its denominator is 0), and Score-CAM upsamples its masks with align_corners=False and its map before the ReLU.
compat="pytorch-grad-cam" gives pytorch-grad-cam's maps instead: 1e-6 in alpha's denominator, masks upsampled with
align_corners=True and normalised by (max - min + 1e-8), and the ReLU before the map is upsampled. Grad-CAM,
XGrad-CAM and Group-CAM are the same either way; Fusion-CAM and Union-CAM build on the chosen Score-CAM.
Eigen-CAM and EigenGrad-CAM: by default the sign of the first singular vector is fixed (the projection's larger
magnitude positive) and Eigen-CAM does not centre the channels (the paper's O V1); pytorch-grad-cam centres them and
keeps the sign NumPy's SVD returns. HiResCAM, Grad-CAM element-wise, LayerCAM, KPCA-CAM and FinerCAM are the same
either way.
Classifier bundles only: a segmentation bundle's Score-CAM scores the region probability, not the summed class
scores pytorch-grad-cam's SemanticSegmentationTarget gives, so no arithmetic option would make the maps equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ...errors import InputError
from ...kernels import KernelSet
from ...kernels import pytorch_grad_cam_math
from ...kernels.array_math import array_module

PYTORCH_GRAD_CAM = "pytorch-grad-cam"
COMPAT_MODES: tuple[str, ...] = (PYTORCH_GRAD_CAM,)


def check_compat(compat) -> str | None:
    """compat as given (None or one of COMPAT_MODES), or an InputError naming the valid values."""
    if compat is None or (isinstance(compat, str) and compat in COMPAT_MODES):
        return compat
    raise InputError(f"compat={compat!r} is not available; give None (the authors' arithmetic, the default) or "
                     f"one of {', '.join(repr(mode) for mode in COMPAT_MODES)}")


@dataclass(frozen=True)
class Arithmetic:
    """The steps where the variants differ, as functions of device arrays."""

    plus_plus_weights: Callable  # (acts, grads) -> Grad-CAM++'s weights [N, K] float64
    mask_min_max: Callable  # (acts, out_hw) -> the Score-CAM masks' mins, maxs [N, K]
    write_masked_inputs: Callable  # the sweep's rows; write_channel_masked_inputs' arguments
    score_map: Callable  # (low [N, h, w] = sum_k a_k A_k, out_hw) -> Score-CAM's map [N, H, W]
    # (maps [N, K, h, w], center) -> Eigen-CAM's / EigenGrad-CAM's projection [N, h, w]: the default centres as asked
    # and fixes the sign (larger magnitude positive); pytorch-grad-cam's always centres and keeps LAPACK's sign
    eigen_projection: Callable = None


def arithmetic(kernels: KernelSet, compat: str | None) -> Arithmetic:
    """The default (authors') arithmetic on these kernels, or pytorch-grad-cam's."""
    if check_compat(compat) == PYTORCH_GRAD_CAM:
        return Arithmetic(
            plus_plus_weights=pytorch_grad_cam_math.plus_plus_weights,
            mask_min_max=pytorch_grad_cam_math.aligned_min_max,
            write_masked_inputs=pytorch_grad_cam_math.write_aligned_channel_masked_inputs,
            score_map=kernels.relu_upsample_normalize,  # norm(up(relu(low))): its scale_cam_image after the ReLU
            eigen_projection=lambda maps, center: pytorch_grad_cam_math.lapack_centered_projection(maps),
        )

    def upsample_relu_normalize(low, out_hw: tuple[int, int]):
        """norm(relu(up(low))): the authors' Score-CAM map."""
        upsampled = kernels.upsample(low, out_hw)
        return kernels.normalize(array_module(upsampled).maximum(upsampled, 0))

    return Arithmetic(
        plus_plus_weights=kernels.gradcam_plus_plus_weights,
        mask_min_max=kernels.upsampled_min_max,
        write_masked_inputs=kernels.write_channel_masked_inputs,
        score_map=upsample_relu_normalize,
        eigen_projection=kernels.first_component_projection,
    )
