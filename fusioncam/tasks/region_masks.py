"""Binary region masks sent as encoded images (a served request's PNG, a dataset row's mask file), decoded once.

A pixel is inside the region where its value is not 0 (in any colour channel; an alpha channel is ignored). A mask
of another size than the model's input is resized to it with nearest-neighbour sampling, as the image it belongs to
is resized (images.resized_rgb), so a mask drawn on the original photo marks the same places on the model's input.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import InputError
from ..image_header import read_header


def decode_mask(raw: bytes, size: tuple[int, int], label: str, max_pixels: int | None = None) -> np.ndarray:
    """bool [H, W] at the model's input size from an encoded image's bytes; InputError naming `label` when the bytes
    are not an image, the image is over `max_pixels`, or no pixel is inside."""
    if not raw:
        raise InputError(f"{label}: the region mask is empty (0 bytes)")
    header = read_header(bytes(raw[:65536]))
    if max_pixels is not None and header is not None and header.width * header.height > max_pixels:
        raise InputError(f"{label}: the region mask is {header.width}x{header.height} pixels, over the limit of "
                         f"{max_pixels:,} pixels")
    decoded = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.size == 0:
        raise InputError(f"{label}: the region mask is not a readable image (give a PNG, 0 outside and non-zero "
                         f"inside)")
    inside = decoded[..., :3].any(axis=2) if decoded.ndim == 3 else decoded != 0
    height, width = size
    if inside.shape != (height, width):
        inside = cv2.resize(inside.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) != 0
    if not inside.any():
        raise InputError(f"{label}: the region mask is all zeros: there is no region to explain")
    return np.asarray(inside, dtype=bool)
