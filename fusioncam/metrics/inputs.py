"""What every metric checks first: images as explain() takes them, one finite map [H, W] per image, a valid step."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..kernels import Array
from ..runtime.input_checks import check_images, resolve_targets
from ..runtime.scorer import Scorer


def checked_images(scorer: Scorer, images, input_size: tuple[int, int]) -> Array:
    """images [N,3,H,W] float32 on the scorer's device, refusing what explain() refuses and NaN or infinity.
    Call inside `scorer.in_use()`."""
    images = scorer.asarray(check_images(images, input_size))
    bad = scorer.to_host(scorer.kernels.nonfinite_rows(images))
    if bad.any():
        raise InputError(f"images {', '.join(str(i) for i in np.flatnonzero(bad))} hold NaN or infinite values")
    return images


def checked_targets(explainer, targets, n: int) -> np.ndarray:
    """targets as int64 [N] on the host, -1 meaning the image's arg-max class."""
    manifest = explainer.bundle.manifest
    return resolve_targets(targets, n, manifest.num_classes, manifest.class_names)


def checked_inputs(explainer, images, maps, targets) -> tuple[Array, Array, np.ndarray]:
    """(images [N,3,H,W] float32, maps [N,H,W] float32) on the explainer's device, and targets int64 [N] on the host
    (-1: the image's arg-max class). Call inside `explainer.scorer.in_use()`. These protocols score a class per
    image: another task's bundle is refused, naming its metrics."""
    task = explainer.task.name
    if task != "classification":
        raise InputError(f"these metrics score image classes; {explainer.bundle.path} is a {task} bundle: score its "
                         f"maps with fusioncam.metrics.segmentation.evaluate_segmentation_maps")
    images = checked_images(explainer.scorer, images, explainer.bundle.manifest.input_size)
    n, _, height, width = images.shape
    maps = device_maps(explainer.scorer, maps, (n, height, width))
    return images, maps, checked_targets(explainer, targets, n)


def device_maps(scorer: Scorer, maps, shape: tuple[int, int, int]) -> Array:
    """maps as float32 [N,H,W] on the scorer's device, refusing a wrong shape, a non-numeric dtype or NaN."""
    if not hasattr(maps, "shape") or not hasattr(maps, "dtype"):
        maps = np.asarray(maps)
    if tuple(maps.shape) != shape:
        raise InputError(
            f"maps have shape {tuple(maps.shape)}; expected one [H, W] map per image, {list(shape)}, "
            f"at the images' resolution"
        )
    if maps.dtype.kind not in "biuf":
        raise InputError(f"maps have dtype {maps.dtype}; expected real numbers (float32 maps in [0, 1])")
    xp = scorer.xp
    maps = xp.ascontiguousarray(scorer.asarray(maps), dtype=xp.float32)
    finite = scorer.to_host(xp.isfinite(maps).reshape(shape[0], -1).all(axis=1))
    if not finite.all():
        which = ", ".join(str(i) for i in np.flatnonzero(~finite))
        raise InputError(f"the maps of images {which} hold NaN or infinite values; pixels cannot be ranked by them")
    return maps


def checked_step(step, plane: int) -> int:
    """The number of pixels changed per step: an int in [1, H*W]."""
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)):
        raise InputError(f"step must be an int number of pixels per step; got {step!r}")
    if not 1 <= int(step) <= plane:
        raise InputError(f"step must be between 1 and the image's {plane} pixels (H*W); got {step}")
    return int(step)
