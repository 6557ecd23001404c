"""Validate images and targets before anything runs, with errors that say what was wrong and how to fix it."""

from __future__ import annotations

import difflib
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..kernels.array_math import array_module

ARGMAX = -1  # the explain graph's target input for "the image's top class"; users say None or "top", never -1
TOP_CLASS_WORDS = ("top",)  # a target given as text that means the image's top class (unless a class is so named)


def check_images(images, input_size: tuple[int, int]):
    """Return images as float32 [N,3,H,W] (same library as given) or raise InputError."""
    xp = array_module(images)
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        try:
            images = np.asarray(images)
        except Exception:
            raise InputError(f"images must be a float32 array [N,3,H,W]; got {type(images).__name__}") from None
        xp = np
    if images.dtype.kind not in "f":
        raise InputError(
            f"images have dtype {images.dtype}; explain() takes preprocessed float32 images [N,3,H,W] "
            f"((rgb/255 - mean)/std). Use Explainer.explain_files for image files, or fusioncam.images.preprocess."
        )
    if images.ndim == 3:
        raise InputError(f"images have shape {tuple(images.shape)}; expected a batch [N,3,H,W] (use images[None] for one image)")
    if images.ndim != 4:
        raise InputError(f"images have shape {tuple(images.shape)}; expected [N,3,H,W]")
    if images.shape[1] != 3:
        hint = " (that looks like NHWC: transpose to NCHW with .transpose(0,3,1,2))" if images.shape[-1] == 3 else ""
        raise InputError(f"images have {images.shape[1]} channels in axis 1 of shape {tuple(images.shape)}; expected 3{hint}")
    if images.shape[0] == 0:
        raise InputError("no images given (N=0)")
    if tuple(images.shape[2:]) != tuple(input_size):
        raise InputError(
            f"images are {images.shape[2]}x{images.shape[3]} but the bundle was exported for "
            f"{input_size[0]}x{input_size[1]}; resize them (explain_files does) or re-export with input_size="
            f"({images.shape[2]}, {images.shape[3]})"
        )
    return xp.ascontiguousarray(images, dtype=xp.float32)


def _one_target(value, num_classes: int, class_names: list[str] | None, position: str) -> int:
    """One target as a class index in 0..C-1, or ARGMAX for the image's top class.

    None or "top" is the top class; an int (or its digits as text) is a class index, a negative one counted from the
    end as Python's indexing does (-1 is the last class, C-1); a string is a class name. -1 is never a hidden "top"."""
    if value is None:
        return ARGMAX
    if isinstance(value, str):
        if class_names and value in class_names:
            return class_names.index(value)
        if value.strip().lower() in TOP_CLASS_WORDS:
            return ARGMAX
        if value.lstrip("-").isdigit() and value.count("-") <= 1:
            value = int(value)
        else:
            close = difflib.get_close_matches(value, class_names or [], n=5, cutoff=0.5)
            hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
            known = "" if class_names else " (this bundle has no class names; use a class index)"
            raise InputError(f"unknown class name {value!r} for {position}{known}.{hint}")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InputError(f"target for {position} must be an int class index, a class name, or None (or \"top\") for "
                         f"the image's top class; got {value!r}")
    value = int(value)
    if not -num_classes <= value < num_classes:
        raise InputError(f"target class {value} for {position} is out of range: the model has {num_classes} classes "
                         f"(0..{num_classes - 1}, or -{num_classes}..-1 counted from the end); None or \"top\" "
                         f"explains each image's top class")
    return value % num_classes


def resolve_targets(targets, n: int, num_classes: int, class_names: list[str] | None = None) -> np.ndarray:
    """int64 [N] of class indices, ARGMAX (-1) meaning the arg-max of the image's logits (asked for with None or
    "top"; a -1 given by the caller is the last class, see _one_target)."""
    if targets is None or isinstance(targets, (int, np.integer, str)):
        return np.full((n,), _one_target(targets, num_classes, class_names, "all images"), dtype=np.int64)
    if hasattr(targets, "tolist"):
        targets = targets.tolist()
    if not isinstance(targets, Sequence):
        raise InputError(f"targets must be None, an int, a class name, or N of them; got {type(targets).__name__}")
    if len(targets) != n:
        raise InputError(f"{len(targets)} targets given for {n} images; give one per image, one for all, or None")
    return np.array([_one_target(t, num_classes, class_names, f"image {i}") for i, t in enumerate(targets)], dtype=np.int64)
