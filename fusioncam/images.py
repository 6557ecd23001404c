"""Reading image files into 8-bit RGB and turning them into normalised model inputs (numpy and OpenCV only)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np

from fusioncam.errors import InputError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# ANYDEPTH keeps 16-bit samples (OpenCV's own 16->8 bit step truncates with >> 8) and ANYCOLOR
# keeps grayscale as one channel and drops alpha. Unlike IMREAD_UNCHANGED (which ignores it),
# every flag combination other than IMREAD_UNCHANGED applies the EXIF orientation tag.
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as uint8 RGB [H, W, 3], upright per its EXIF orientation.

    Grayscale becomes 3 equal channels, alpha is dropped (as PIL's convert('RGB')), 16-bit
    samples become round(v / 257), float samples (HDR, float TIFF) round(clip(v, 0, 1) * 255);
    other depths use OpenCV's own 8-bit conversion. OpenCV premultiplies alpha in TIFF files,
    so semi-transparent RGBA TIFFs come back darkened.
    """
    name = os.fspath(path)
    try:
        data = np.fromfile(name, dtype=np.uint8)  # bytes, not cv2.imread: unicode paths work everywhere
    except FileNotFoundError:
        raise InputError(f"image file {name!r} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"image path {name!r} is a directory, not an image file") from None
    except OSError as exc:
        raise InputError(f"image file {name!r} cannot be read: {exc.strerror or exc}") from None
    if data.size == 0:
        raise InputError(f"image file {name!r} is empty")
    image = _decode(data, _DECODE_FLAGS, name)
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)  # == round(v / 257): no ties, 257 is odd
    elif image.dtype in (np.float32, np.float64):
        if not np.isfinite(image).all():
            raise InputError(f"image file {name!r} holds NaN or infinite samples")
        image = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = _decode(data, cv2.IMREAD_COLOR, name)
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image file {name!r} decoded to an unsupported shape {image.shape}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _decode(data: np.ndarray, flags: int, name: str) -> np.ndarray:
    """Decode file bytes with OpenCV, turning its failures into an InputError naming the file."""
    try:
        image = cv2.imdecode(data, flags)
    except cv2.error as exc:
        raise InputError(f"image file {name!r} cannot be decoded by OpenCV: {exc}") from None
    if image is None or image.size == 0:
        raise InputError(f"image file {name!r} is corrupt or not an image format OpenCV can read")
    return image


def preprocess(
    rgb: np.ndarray,
    size: tuple[int, int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Resize uint8 RGB [H, W, 3] to size (H, W) and normalise to float32 [3, H, W] as (rgb/255 - mean)/std.

    The whole image is resized (no crop, aspect ratio not kept) with cv2.INTER_LINEAR on the uint8
    pixels: OpenCV's standard bilinear, no antialias, so the input is exactly the overlay image.
    """
    resized = resized_rgb(rgb, size)
    mean_arr, std_arr = _channel_stats(mean, std)
    scaled = resized.astype(np.float32) / np.float32(255.0)
    normalised = (scaled - mean_arr) / std_arr
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)


def resized_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The uint8 RGB image resized to size (H, W) with cv2.INTER_LINEAR, as preprocess sees it."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise InputError(f"expected a uint8 RGB image of shape [H, W, 3], got {got}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InputError(f"image has no pixels (shape {rgb.shape})")
    height, width = _checked_size(size)
    if rgb.shape[:2] == (height, width):
        return rgb.copy()
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)


def load_batch(
    paths: Sequence[str | os.PathLike[str]],
    size: tuple[int, int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Read and preprocess files into float32 [N, 3, H, W], plus each resized uint8 RGB image for overlays."""
    if isinstance(paths, (str, os.PathLike)):
        raise InputError("load_batch expects a list of paths, got a single path")
    if len(paths) == 0:
        raise InputError("load_batch got an empty list of paths")
    height, width = _checked_size(size)
    batch = np.empty((len(paths), 3, height, width), dtype=np.float32)
    shown: list[np.ndarray] = []
    for i, path in enumerate(paths):
        resized = resized_rgb(read_rgb(path), (height, width))
        batch[i] = preprocess(resized, (height, width), mean, std)
        shown.append(resized)
    return batch, shown


def sample_images() -> dict[str, np.ndarray]:
    """The five real sample photos of scikit-image as uint8 RGB: astronaut, chelsea, coffee, rocket, motorcycle."""
    from skimage import data  # lazy: only the demos and tests need scikit-image

    return {
        "astronaut": np.ascontiguousarray(data.astronaut()),
        "chelsea": np.ascontiguousarray(data.chelsea()),
        "coffee": np.ascontiguousarray(data.coffee()),
        "rocket": np.ascontiguousarray(data.rocket()),
        "motorcycle": np.ascontiguousarray(data.stereo_motorcycle()[0]),
    }


def _checked_size(size: tuple[int, int]) -> tuple[int, int]:
    """Validate an (H, W) target size of two positive integers."""
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InputError(f"size must be (H, W), two positive integers, got {size!r}") from None
    if height <= 0 or width <= 0 or (height, width) != tuple(size):
        raise InputError(f"size must be (H, W), two positive integers, got {size!r}")
    return height, width


def _channel_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std as float32 arrays of 3, checking std is positive."""
    mean_arr = np.asarray(mean, dtype=np.float32).reshape(-1)
    std_arr = np.asarray(std, dtype=np.float32).reshape(-1)
    if mean_arr.shape != (3,) or std_arr.shape != (3,):
        raise InputError(f"mean and std need 3 values (R, G, B), got {len(mean_arr)} and {len(std_arr)}")
    if not np.all(np.isfinite(mean_arr)) or not np.all(std_arr > 0):
        raise InputError(f"mean must be finite and std positive, got mean={tuple(mean)} std={tuple(std)}")
    return mean_arr, std_arr
