"""Where a segmentation request explains its class: the region of each image, read from a v1 instance or a v2 request.

A region is what `Explainer.explain(regions=...)` takes for one image (docs/segmentation.md): "predicted" (where the
model predicts the class; the default), "all", a box (x0, y0, x1, y1) in the model's input pixels, or a mask.

- v1: an instance's "region", or the request parameter "region" (one for all instances, or a list with one per
  instance): "predicted", "all", [x0, y0, x1, y1], {"mask": {"b64": <PNG>}} or {"mask": [[0, 1, ...], ...]}.
- v2: an optional input tensor named "region", BOOL or UINT8 [N, H, W] (masks) or FP32 / INT32 [N, 4] (boxes), or
  the parameter "region": "predicted", "all" or "x0,y0,x1,y1" (one for all images).

Masks are binary: a pixel is inside where its value is not 0 (any channel of a colour PNG). An encoded mask of
another size than the model's input is resized to it with nearest-neighbour sampling, as the image it belongs to is
resized (images.resized_rgb); a mask array must already be [H, W] at the model's input size.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..tasks.region_masks import decode_mask
from ..tasks.segmentation_regions import box_region
from .decoding import encoded_bytes
from .request_errors import BadRequest

REGION_INPUT = "region"
MASK_DATATYPES = ("BOOL", "UINT8")
BOX_DATATYPES = ("FP32", "INT32")
REGION_FORMS = '"predicted", "all", [x0, y0, x1, y1], {"mask": {"b64": <PNG>}} or {"mask": [[...]]}'


def checked_box(values: Sequence, size: tuple[int, int], label: str) -> tuple[int, ...]:
    """A box (x0, y0, x1, y1) of whole numbers inside the model's input, or a BadRequest naming the instance."""
    box = [int(v) if isinstance(v, float) and float(v).is_integer() else v for v in values]
    try:
        box_region(box, size, label)
    except InputError as exc:
        raise BadRequest(str(exc)) from None
    return tuple(int(v) for v in box)


def checked_mask(mask: np.ndarray, size: tuple[int, int], label: str) -> np.ndarray:
    """A binary mask bool [H, W] at the model's input size with at least one pixel inside."""
    if mask.shape != tuple(size):
        raise BadRequest(f"{label}: the region mask has shape {list(mask.shape)}; it must be [H, W] = {list(size)}, the "
                         f"model's input size (or send it as an encoded PNG, which is resized with the image)")
    inside = mask != 0
    if not inside.any():
        raise BadRequest(f"{label}: the region mask is all zeros: there is no region to explain")
    return inside


def mask_from_png(data: str | bytes, size: tuple[int, int], max_pixels: int, label: str) -> np.ndarray:
    """An encoded mask image (base64 text or bytes): inside where any channel is not 0, resized to the input size."""
    raw = encoded_bytes(data, f"{label}: the region mask")
    try:
        return decode_mask(raw, size, label, max_pixels)
    except InputError as exc:
        raise BadRequest(f"{exc} (this server's limit: --max-image-pixels)" if "over the limit" in str(exc)
                         else str(exc)) from None


def region_from_json(value: Any, size: tuple[int, int], max_pixels: int, label: str):
    """One v1 region (an instance's, or the request's for this instance) as Explainer.explain takes it."""
    if value is None or value == "predicted":
        return "predicted"
    if value == "all":
        return "all"
    if isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value):
        return checked_box(value, size, label)
    if isinstance(value, dict) and set(value) == {"mask"}:
        mask = value["mask"]
        if isinstance(mask, dict) and isinstance(mask.get("b64"), str):
            return mask_from_png(mask["b64"], size, max_pixels, label)
        if isinstance(mask, list):
            try:
                array = np.asarray(mask)
            except (ValueError, TypeError):
                array = None
            if array is None or array.dtype.kind not in "biuf":
                raise BadRequest(f"{label}: the region mask must be a [H, W] array of 0 and 1; got a ragged or "
                                 f"non-numeric list")
            return checked_mask(array, size, label)
    raise BadRequest(f"{label}: region {_short(value)} is not one of {REGION_FORMS}")


def v1_regions(shared: Any, instances: list, size: tuple[int, int], max_pixels: int) -> list:
    """Each v1 instance's region: its own "region", else the request parameter's (one for all, or one per instance)."""
    count = len(instances)
    if isinstance(shared, list) and not _is_box(shared):  # a list of regions (a box is one region for all)
        if len(shared) != count:
            raise BadRequest(f"parameter 'region' lists {len(shared)} regions for {count} instances; give one per "
                             f"instance, or one for all")
        per_instance = shared
    else:
        per_instance = [shared] * count
    regions = []
    for i, instance in enumerate(instances):
        value = instance["region"] if isinstance(instance, dict) and "region" in instance else per_instance[i]
        regions.append(region_from_json(value, size, max_pixels, f"instance {i}"))
    return regions


def _is_box(value: list) -> bool:
    return len(value) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def region_from_text(value: Any, size: tuple[int, int], label: str):
    """The v2 parameter 'region': predicted, all, or x0,y0,x1,y1."""
    if value is None or value in ("predicted", "all"):
        return value or "predicted"
    if isinstance(value, str):
        parts = value.split(",")
        if len(parts) == 4 and all(p.strip().lstrip("-").isdigit() for p in parts):
            return checked_box([int(p) for p in parts], size, label)
    raise BadRequest(f"parameter 'region' must be predicted, all or x0,y0,x1,y1 (integers, in the model's input "
                     f"pixels); got {_short(value)}")


def v2_regions(tensor, parameter: Any, count: int, size: tuple[int, int]) -> list:
    """Each image's region from the v2 'region' input tensor (masks or boxes), else from the 'region' parameter."""
    if tensor is None:
        return [region_from_text(parameter, size, "parameter 'region'")] * count
    if parameter is not None:
        raise BadRequest("send the region either as the 'region' input tensor or as the 'region' parameter, not both")
    shape = [int(d) for d in tensor.shape]
    if tensor.datatype not in (*MASK_DATATYPES, *BOX_DATATYPES):
        raise BadRequest(f"input '{REGION_INPUT}' has datatype {tensor.datatype}; send BOOL or UINT8 masks [N, H, W] "
                         f"or FP32 or INT32 boxes [N, 4]")
    if not shape or shape[0] != count:
        raise BadRequest(f"input '{REGION_INPUT}' has shape {shape} for {count} image(s); its first dimension must "
                         f"be the number of images")
    try:
        array = tensor.as_numpy()
    except Exception as exc:  # KServe's own reshape/decoding of the tensor data
        raise BadRequest(f"input '{REGION_INPUT}' cannot be read as {tensor.datatype} {shape}: {exc}") from None
    if tensor.datatype in MASK_DATATYPES:
        if array.ndim != 3:
            raise BadRequest(f"input '{REGION_INPUT}' ({tensor.datatype}) has shape {shape}; send masks [N, H, W] = "
                             f"[N, {size[0]}, {size[1]}]")
        return [checked_mask(array[i], size, f"instance {i}") for i in range(count)]
    if array.ndim != 2 or array.shape[1] != 4:
        raise BadRequest(f"input '{REGION_INPUT}' ({tensor.datatype}) has shape {shape}; send boxes [N, 4] "
                         f"(x0, y0, x1, y1 in the model's input pixels)")
    if tensor.datatype == "FP32" and not (np.isfinite(array).all() and (array == np.round(array)).all()):
        raise BadRequest(f"input '{REGION_INPUT}' (FP32 boxes) must hold whole pixel numbers")
    return [checked_box(array[i].tolist(), size, f"instance {i}") for i in range(count)]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
