"""Reading image files into 8-bit RGB and turning them into normalised model inputs (numpy and OpenCV only)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np

from fusioncam import arguments
from fusioncam.decoder_output import quiet_decoder
from fusioncam.errors import InputError
from fusioncam.file_reading import read_regular_file
from fusioncam.image_header import ImageHeader, read_header, structure_problem

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# ANYDEPTH keeps 16-bit samples (OpenCV's own 16->8 bit step truncates with >> 8) and ANYCOLOR
# keeps grayscale as one channel and drops alpha. Unlike IMREAD_UNCHANGED (which ignores it),
# every flag combination other than IMREAD_UNCHANGED applies the EXIF orientation tag.
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


# Decoded images may hold at most this many pixels unless the caller (max_pixels=) or the environment
# (FUSIONCAM_MAX_IMAGE_PIXELS) allows more: 150 megapixels is a 15000x10000 photo, about 450 MB as RGB and
# about 1.5 GB at the peak of decoding a 16-bit file. The size is read from the file's header before decoding.
DEFAULT_MAX_IMAGE_PIXELS = 150_000_000
MAX_PIXELS_ENV = "FUSIONCAM_MAX_IMAGE_PIXELS"
# JPEGs decode at 1/2, 1/4 or 1/8 scale through libjpeg's DCT scaling: no full-size buffer at any point.
_REDUCED_JPEG_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
# The longest side fusioncam's own readers (the CLI, explain_files, load_batch) need: overlays are written at most
# this large (visualize.OVERLAY_MAX_SIDE), so JPEGs of twice this or more are decoded reduced.
MAX_WORKING_SIDE = 4096
_BAND_SAMPLES = 1 << 22  # 16-bit and float images are converted to 8 bits in row bands of about this many samples


def max_image_pixels(max_pixels: int | None = None) -> int:
    """The pixel limit in force: `max_pixels` when given, else $FUSIONCAM_MAX_IMAGE_PIXELS, else the default."""
    if max_pixels is not None:
        return arguments.integer("max_pixels", max_pixels, minimum=1)
    text = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"environment variable {MAX_PIXELS_ENV} must be a positive whole number of pixels "
                         f"(e.g. 400000000); got {os.environ[MAX_PIXELS_ENV]!r}")
    return int(text)


def read_rgb(path: str | os.PathLike[str], max_pixels: int | None = None, max_side: int | None = None) -> np.ndarray:
    """Read an image file as uint8 RGB [H, W, 3], upright per its EXIF orientation.

    Grayscale becomes 3 equal channels, alpha is dropped (as PIL's convert('RGB')), 16-bit
    samples become round(v / 257), float samples (HDR, float TIFF) round(clip(v, 0, 1) * 255);
    other depths use OpenCV's own 8-bit conversion. OpenCV premultiplies alpha in TIFF files,
    so semi-transparent RGBA TIFFs come back darkened.

    Memory is bounded: an image of more than `max_pixels` pixels (see max_image_pixels) is refused from its
    header, before decoding. `max_side` says the caller needs at most that many pixels on the longest side: a
    JPEG at least twice as large is then decoded at the smallest 1/2, 1/4 or 1/8 scale whose longest side is
    still >= max_side (libjpeg's DCT scaling, a little different from a resize of the full image), and the pixel
    limit applies to the reduced size. None (the default) decodes at full resolution.
    """
    name = os.fspath(arguments.path("path", path))
    # bytes, not cv2.imread: unicode paths work everywhere; FIFOs and devices are refused before a byte is read
    data = np.frombuffer(read_regular_file(name), dtype=np.uint8)
    return decode_rgb(data, name, max_pixels=max_pixels, max_side=max_side)


def decode_rgb(data: bytes | np.ndarray, name: str, max_pixels: int | None = None,
               max_side: int | None = None) -> np.ndarray:
    """Decode an image file's bytes exactly as read_rgb does (`name` only labels errors): uint8 RGB [H, W, 3]."""
    data = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    limit = max_image_pixels(max_pixels)
    arguments.integer("max_side", max_side, minimum=1, allow_none=True)
    if data.size == 0:
        raise InputError(f"image file {name!r} is empty")
    header = read_header(data[:65536].tobytes())
    problem = structure_problem(memoryview(data), header)
    if problem is not None:
        raise InputError(f"image file {name!r} is corrupt: {problem}")
    scale = _jpeg_scale(header, max_side)
    if header is not None:
        _check_pixels(name, -(-header.width // scale), -(-header.height // scale), limit, header, scale)
    if scale > 1:
        image = _decode(data, _REDUCED_JPEG_FLAGS[scale], name)
    else:
        image = _decode(data, _DECODE_FLAGS, name)
    if header is None:  # a format whose header is not parsed: checked now (OpenCV itself stops at 2^30 pixels)
        _check_pixels(name, image.shape[1], image.shape[0], limit, None, 1)
    if image.dtype in (np.uint16, np.float32, np.float64):
        image = _to_uint8(image, name)
    elif image.dtype != np.uint8:
        image = _decode(data, cv2.IMREAD_COLOR, name)
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image file {name!r} decoded to an unsupported shape {image.shape}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _jpeg_scale(header: ImageHeader | None, max_side: int | None) -> int:
    """1, 2, 4 or 8: the largest JPEG reduction whose longest side stays >= max_side (1 when not a JPEG)."""
    if header is None or header.format != "jpeg" or max_side is None:
        return 1
    longest = max(header.width, header.height)
    for scale in (8, 4, 2):
        if -(-longest // scale) >= max_side:
            return scale
    return 1


def _check_pixels(name: str, width: int, height: int, limit: int, header: ImageHeader | None, scale: int) -> None:
    """Refuse an image larger than the pixel limit, saying how large it is and how to allow it."""
    if width * height <= limit:
        return
    stored = f"{header.width}x{header.height}" if header is not None else f"{width}x{height}"
    reduced = f" (decoded at 1/{scale}: {width}x{height})" if scale > 1 else ""
    raise InputError(
        f"image file {name!r} is {stored} pixels{reduced}, {width * height / 1e6:.1f} megapixels, over the limit of "
        f"{limit / 1e6:.1f} megapixels that bounds the memory of decoding (about 10 bytes per pixel); to read it, "
        f"raise the limit with max_pixels= or the environment variable {MAX_PIXELS_ENV} (e.g. "
        f"{MAX_PIXELS_ENV}={width * height}), or shrink the image first"
    )


def _to_uint8(image: np.ndarray, name: str) -> np.ndarray:
    """16-bit samples as round(v / 257), float ones as round(clip(v, 0, 1) * 255), converted in row bands so the
    temporaries stay small; NaN or infinite samples are an InputError naming the file."""
    out = np.empty(image.shape, dtype=np.uint8)
    rows = max(1, _BAND_SAMPLES // max(1, image[0].size))
    for first in range(0, image.shape[0], rows):
        band = image[first:first + rows]
        if image.dtype == np.uint16:
            out[first:first + rows] = (band.astype(np.uint32) + 128) // 257  # == round(v / 257): no ties, 257 is odd
            continue
        if not np.isfinite(band).all():
            raise InputError(f"image file {name!r} holds NaN or infinite samples")
        out[first:first + rows] = np.rint(np.clip(band, 0.0, 1.0) * 255.0)
    return out


def _decode(data: np.ndarray, flags: int, name: str) -> np.ndarray:
    """Decode file bytes with OpenCV, turning its failures into an InputError naming the file. What the decoders
    print meanwhile stays off the terminal when this error reports the failure (it quotes them), see
    decoder_output."""
    with quiet_decoder() as printed:
        try:
            image = cv2.imdecode(data, flags)
        except cv2.error as exc:
            image, failure = None, f"cannot be decoded by OpenCV: {exc}"
        else:
            failure = None if image is not None and image.size else "is corrupt or not an image format OpenCV can read"
    if failure is None:
        printed.release()
        return image
    said = printed.summary()
    raise InputError(f"image file {name!r} {failure}" + (f" (the decoder said: {said})" if said else ""))


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


def decode_model_input(data: bytes | np.ndarray, name: str, size: tuple[int, int],
                       mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                       max_pixels: int | None = None) -> np.ndarray:
    """float32 [3, H, W]: an encoded image's bytes turned into a model input the way every fusioncam reader does it
    (read_rgb for the CLI and explain_files, served images, explain-dataset rows): decode_rgb with max_side
    MAX_WORKING_SIDE, then preprocess (the whole image resized to `size` with cv2.INTER_LINEAR, normalised)."""
    return preprocess(decode_rgb(data, name, max_pixels=max_pixels, max_side=MAX_WORKING_SIDE), size, mean, std)


def resized_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The uint8 RGB image (NumPy, or a torch tensor) resized to size (H, W) with cv2.INTER_LINEAR, as preprocess
    sees it."""
    if arguments.is_torch_tensor(rgb):
        rgb = arguments.host_array("rgb", rgb)
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
    max_pixels: int | None = None,
    max_side: int | None = MAX_WORKING_SIDE,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Read and preprocess files into float32 [N, 3, H, W], plus each resized uint8 RGB image for overlays.

    `paths` is a list of paths (one path alone is a list of one); max_pixels and max_side as in read_rgb: by default
    JPEGs of 8192 pixels or more on their longest side are decoded reduced, as the CLI reads them."""
    paths = arguments.path_list("paths", paths)
    height, width = _checked_size(size)
    batch = np.empty((len(paths), 3, height, width), dtype=np.float32)
    shown: list[np.ndarray] = []
    for i, path in enumerate(paths):
        resized = resized_rgb(read_rgb(path, max_pixels, max_side), (height, width))
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
