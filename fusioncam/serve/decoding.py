"""Turning what a client sends into model inputs: encoded images (base64 text or raw bytes), uint8 RGB arrays and
preprocessed float arrays, each checked on its own and refused with an error naming the instance.

Encoded images are decoded exactly as `fusioncam explain` reads files (fusioncam.images.decode_rgb with
max_side=MAX_WORKING_SIDE, then preprocess with the bundle's size, mean and std: images.decode_model_input's
steps, split here so that the decode alone reserves the memory budget). The pixel limit
(--max-image-pixels) applies to the image as sent: its width x height is read from the header and an image over
the limit is refused before any pixel is allocated (a decompression bomb); decode_rgb checks it again.

Memory (pixel_budget.py): each decode reserves its decoding memory from the server's budget first (waiting for
it, or 503), a request's images are decoded one at a time, and only the model-size tensor is kept: the picture an
overlay is drawn on is decoded again from the request's bytes when, and only when, overlays are asked for. An
allocation that fails is the server's MemoryExhausted (503), never a BadRequest blaming the image.
"""

from __future__ import annotations

import base64
import binascii
import re
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..bundle import Manifest
from ..errors import InputError
from ..image_header import read_header
from ..images import MAX_WORKING_SIDE, decode_rgb, preprocess
from .pixel_budget import DECODE_BYTES_PER_PIXEL, MemoryExhausted, PixelBudget, is_allocation_failure
from .request_errors import BadRequest

_BASE64_TEXT = re.compile(rb"^[A-Za-z0-9+/=\s_-]+$")


@dataclass(frozen=True)
class ModelImage:
    """One image ready to explain: the preprocessed tensor, and the RGB picture overlays are drawn on (`picture`:
    kept as sent for pixel arrays, decoded again on demand for encoded images)."""

    tensor: np.ndarray  # float32 [3, H, W] at the model's input size
    source: np.ndarray | Callable[[], np.ndarray]  # the picture, or how to decode it again

    @property
    def picture(self) -> np.ndarray:
        """uint8 RGB [h, w, 3]: the image at its own resolution (the de-normalised tensor for floats)."""
        return self.source() if callable(self.source) else self.source


class ImageDecoder:
    """Decodes and checks one instance at a time for one bundle (its input size, mean and std) and pixel limit;
    with a `budget`, every decode first reserves its memory from it."""

    def __init__(self, manifest: Manifest, max_image_pixels: int, budget: PixelBudget | None = None) -> None:
        self.size = tuple(manifest.input_size)
        self.mean = np.asarray(manifest.mean, dtype=np.float32)
        self.std = np.asarray(manifest.std, dtype=np.float32)
        self._manifest = manifest
        self.max_image_pixels = int(max_image_pixels)
        self.budget = budget

    def from_encoded(self, data: bytes | str, label: str) -> ModelImage:
        """An encoded image (PNG, JPEG, ...): raw bytes, or base64 text (str, or bytes of the base64 alphabet)."""
        raw = encoded_bytes(data, label)
        header = read_header(raw[:65536])
        if header is not None:  # decode_rgb checks the same limit; this says which server option sets it
            self._check_pixels(header.width, header.height, label)
        pixels = header.pixels if header is not None else self.max_image_pixels  # unknown: the worst case
        tensor = self._decoded(raw, label, pixels, self._model_tensor)
        return ModelImage(tensor=tensor, source=lambda: self._decoded(raw, label, pixels, np.ascontiguousarray))

    def _decoded(self, raw: bytes, label: str, pixels: int, keep: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Decode within the memory budget and return keep(rgb); allocation failures are the server's (503)."""
        budget = self.budget
        reserved = budget.reserve(pixels * DECODE_BYTES_PER_PIXEL, label) if budget is not None else nullcontext()
        try:
            with reserved:
                return keep(decode_rgb(raw, label, max_pixels=self.max_image_pixels, max_side=MAX_WORKING_SIDE))
        except MemoryError:
            raise _out_of_memory(label) from None
        except InputError as exc:
            if is_allocation_failure(str(exc)):
                raise _out_of_memory(label) from None
            raise BadRequest(str(exc)) from None

    def _model_tensor(self, rgb: np.ndarray) -> np.ndarray:
        """The decoded image resized and normalised to the model's input (what `fusioncam explain` computes)."""
        return preprocess(rgb, self.size, self._manifest.mean, self._manifest.std)

    def from_rgb(self, rgb: np.ndarray, label: str) -> ModelImage:
        """A uint8 RGB array [h, w, 3] of any size: resized to the model's input size as files are."""
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            got = f"{rgb.dtype} {list(rgb.shape)}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
            raise BadRequest(f"{label}: expected uint8 RGB pixels [H, W, 3]; got {got}")
        self._check_pixels(rgb.shape[1], rgb.shape[0], label)
        try:
            tensor = self._model_tensor(rgb)
        except InputError as exc:
            raise BadRequest(f"{label}: {exc}") from None
        except MemoryError:
            raise _out_of_memory(label) from None
        return ModelImage(tensor=tensor, source=np.ascontiguousarray(rgb))

    def from_tensor(self, values, label: str) -> ModelImage:
        """A preprocessed float array [3, H, W] ((rgb/255 - mean)/std) at exactly the model's input size."""
        try:
            array = np.asarray(values)
        except (ValueError, TypeError):
            raise BadRequest(f"{label}: the array is ragged (rows of different lengths); expected float [3, H, W]") from None
        if array.dtype == object or array.dtype.kind not in "fiu":
            raise BadRequest(f"{label}: expected numbers in a float array [3, H, W]; got dtype {array.dtype}")
        expected = (3, *self.size)
        if array.shape != expected:
            raise BadRequest(f"{label}: the array has shape {list(array.shape)}; this model takes preprocessed float "
                             f"arrays {list(expected)} (or send an encoded image, which is resized for you)")
        tensor = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(tensor).all():
            raise BadRequest(f"{label}: the array holds NaN or infinite values")
        pixels = tensor.transpose(1, 2, 0) * self.std + self.mean
        picture = np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
        return ModelImage(tensor=tensor, source=picture)

    def _check_pixels(self, width: int, height: int, label: str) -> None:
        if int(width) * int(height) > self.max_image_pixels:
            raise BadRequest(f"{label}: the image is {width}x{height} = {int(width) * int(height):,} pixels, over this "
                             f"server's limit of {self.max_image_pixels:,} (--max-image-pixels); send a smaller image")


def _out_of_memory(label: str) -> MemoryExhausted:
    return MemoryExhausted(f"{label}: the server ran out of memory decoding this image (not a problem of the image); "
                           f"retry later or on another replica")


def encoded_bytes(data: bytes | str, label: str) -> bytes:
    """The image file's bytes: base64 text decoded (str, or bytes made only of base64 characters), raw bytes as sent."""
    if isinstance(data, str):
        text = data.encode("ascii", errors="replace")
    elif isinstance(data, (bytes, bytearray, memoryview)):
        text = bytes(data)
        if not _BASE64_TEXT.match(text):
            if not text:
                raise BadRequest(f"{label}: the encoded image is empty")
            return text  # raw image bytes (PNG, JPEG, ... never consist only of base64 characters)
    else:
        raise BadRequest(f"{label}: an encoded image must be base64 text or bytes; got {type(data).__name__}")
    compact = b"".join(text.split())
    try:
        raw = base64.b64decode(compact, altchars=b"-_" if b"-" in compact or b"_" in compact else None, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"{label}: the image is not valid base64 ({exc})") from None
    if not raw:
        raise BadRequest(f"{label}: the encoded image is empty")
    return raw
