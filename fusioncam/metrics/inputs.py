"""What every metric checks first: images as explain() takes them, one finite map [H, W] per image, a valid step."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..runtime.input_checks import check_images, resolve_targets


def checked_inputs(explainer, images, maps, targets) -> tuple[object, object, np.ndarray]:
    """(images [N,3,H,W] float32, maps [N,H,W] float32) on the explainer's device, and targets int64 [N] on the host
    (-1: the image's arg-max class). Call inside `explainer.backend.context()`."""
    backend = explainer.backend
    manifest = explainer.bundle.manifest
    images = backend.asarray(check_images(images, manifest.input_size))
    n, _, height, width = images.shape
    bad = backend.to_host(backend.kernels.nonfinite_rows(images))
    if bad.any():
        raise InputError(f"images {', '.join(str(i) for i in np.flatnonzero(bad))} hold NaN or infinite values")
    maps = _device_maps(backend, maps, (n, height, width))
    return images, maps, resolve_targets(targets, n, manifest.num_classes, manifest.class_names)


def _device_maps(backend, maps, shape: tuple[int, int, int]):
    """maps as float32 [N,H,W] on the backend's device, refusing a wrong shape, a non-numeric dtype or NaN."""
    if not hasattr(maps, "shape") or not hasattr(maps, "dtype"):
        maps = np.asarray(maps)
    if tuple(maps.shape) != shape:
        raise InputError(
            f"maps have shape {tuple(maps.shape)}; expected one [H, W] map per image, {list(shape)}, "
            f"at the images' resolution"
        )
    if maps.dtype.kind not in "biuf":
        raise InputError(f"maps have dtype {maps.dtype}; expected real numbers (float32 maps in [0, 1])")
    xp = backend.xp
    maps = xp.ascontiguousarray(backend.asarray(maps), dtype=xp.float32)
    finite = backend.to_host(xp.isfinite(maps).reshape(shape[0], -1).all(axis=1))
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
