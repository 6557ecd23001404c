"""Pictures of explanations: a heatmap over an image (`overlay`) and side-by-side panels with titled tiles."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .. import arguments
from ..errors import InputError
from ..images import MAX_WORKING_SIDE

COLORMAPS: dict[str, int] = {
    name[len("COLORMAP_"):].lower(): getattr(cv2, name) for name in dir(cv2) if name.startswith("COLORMAP_")
}

BACKGROUND = (255, 255, 255)
TEXT_COLOR = (20, 20, 20)
FONT = cv2.FONT_HERSHEY_SIMPLEX
TITLE_SCALE = 0.6
LABEL_SCALE = 0.45
MARGIN = 8
TITLE_HEIGHT = 30
LABEL_HEIGHT = 20
OVERLAY_MAX_SIDE = MAX_WORKING_SIDE  # overlays' longest side, in pixels (see overlay)
BLEND_BAND_PIXELS = 1 << 20  # overlays are colour-mapped and blended this many pixels at a time


def colormap_code(name: str) -> int:
    """OpenCV's colormap constant for a name such as 'jet', 'turbo' or 'viridis' (case-insensitive)."""
    code = COLORMAPS.get(arguments.text("colormap", name).lower())
    if code is None:
        raise InputError(f"unknown colormap {name!r}; choose one of: {', '.join(sorted(COLORMAPS))}")
    return code


def overlay(image_rgb: np.ndarray, cam: np.ndarray, colormap: str = "jet", alpha: float = 0.5,
            max_side: int | None = OVERLAY_MAX_SIDE) -> np.ndarray:
    """Blend a colour-mapped CAM over a uint8 RGB image: round(alpha * heat + (1 - alpha) * image) as uint8.

    heat is cv2.applyColorMap(round(255 * clip(cam, 0, 1))) in RGB; a cam of another size is first resized
    to the image with cv2.INTER_LINEAR (whole-image resize, the inverse of how inputs are preprocessed).

    The result's longest side is at most `max_side` (OVERLAY_MAX_SIDE, 4096, by default; None for the image's own
    size): a larger image is first shrunk with cv2.INTER_AREA, keeping its aspect ratio, so an overlay costs at
    most about 11 bytes per output pixel (the image, the resized cam, its levels and the result, blended in row
    bands) whatever the input's size.
    """
    alpha = arguments.number("alpha", alpha, 0.0, 1.0)
    max_side = arguments.integer("max_side", max_side, minimum=1, allow_none=True)
    code = colormap_code(colormap)
    image = _bounded(_checked_rgb(image_rgb), max_side)
    levels = _cam_levels(cam, image.shape[:2])
    out = np.empty_like(image)
    rows = max(1, BLEND_BAND_PIXELS // image.shape[1])
    for first in range(0, image.shape[0], rows):
        band = slice(first, first + rows)
        heat = cv2.cvtColor(cv2.applyColorMap(levels[band], code), cv2.COLOR_BGR2RGB)
        blended = alpha * heat.astype(np.float64) + (1.0 - alpha) * image[band].astype(np.float64)
        out[band] = np.clip(np.rint(blended), 0, 255)
    return out


def _bounded(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """The image shrunk (cv2.INTER_AREA, aspect kept) so that its longest side is at most max_side."""
    height, width = image.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, min(max_side, round(width * scale))), max(1, min(max_side, round(height * scale))))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _checked_rgb(image_rgb: np.ndarray) -> np.ndarray:
    """The image as a contiguous uint8 [H, W, 3] array (a torch tensor converted), or an InputError saying what it
    is instead."""
    if arguments.is_torch_tensor(image_rgb):
        image_rgb = arguments.host_array("image_rgb", image_rgb)
    if not isinstance(image_rgb, np.ndarray) or image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        got = f"{image_rgb.dtype} {image_rgb.shape}" if isinstance(image_rgb, np.ndarray) else type(image_rgb).__name__
        raise InputError(f"overlay needs a uint8 RGB image [H, W, 3]; got {got}")
    if image_rgb.shape[0] == 0 or image_rgb.shape[1] == 0:
        raise InputError(f"image has no pixels (shape {image_rgb.shape})")
    return np.ascontiguousarray(image_rgb)


def _cam_levels(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A [h, w] CAM resized to size (H, W) and quantised to uint8 levels 0..255."""
    cam = arguments.host_array("cam", cam)
    if hasattr(cam, "get") and not isinstance(cam, np.ndarray):  # a CuPy array
        cam = cam.get()
    if cam.dtype.kind not in "biuf":
        raise arguments.rejected("cam", cam, "a real-valued map [H, W]")
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim == 3 and cam.shape[0] == 1:
        cam = cam[0]
    if cam.ndim != 2 or cam.size == 0:
        raise InputError(f"cam must be one map [H, W]; got shape {cam.shape} (index a batch: cams[i])")
    if not np.isfinite(cam).all():
        raise InputError("cam contains NaN or infinite values")
    if cam.shape != tuple(size):
        cam = cv2.resize(cam, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return np.rint(np.clip(cam, 0.0, 1.0) * 255.0).astype(np.uint8)


@dataclass(frozen=True)
class PanelLayout:
    """Where the tiles of a panel go: a title line, then per tile a label strip above the tile."""

    tile_height: int
    tile_width: int
    count: int

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the whole panel."""
        height = TITLE_HEIGHT + LABEL_HEIGHT + self.tile_height + MARGIN
        width = MARGIN + self.count * (self.tile_width + MARGIN)
        return height, width

    def tile_origin(self, index: int) -> tuple[int, int]:
        """(y, x) of tile `index`'s top-left pixel."""
        return TITLE_HEIGHT + LABEL_HEIGHT, MARGIN + index * (self.tile_width + MARGIN)


def tile_size(image_hw: tuple[int, int], tile_height: int = 224) -> tuple[int, int]:
    """(height, width) of one tile: `tile_height` high, the image's aspect ratio kept within 1:2 .. 2:1."""
    height, width = image_hw
    tile_width = int(round(tile_height * width / height))
    return tile_height, min(max(tile_width, tile_height // 2), 2 * tile_height)


def panel(
    image_rgb: np.ndarray,
    maps: Sequence[tuple[str, np.ndarray]],
    title: str,
    tile_height: int = 224,
    colormap: str = "jet",
    alpha: float = 0.5,
    image_label: str = "image",
) -> np.ndarray:
    """uint8 RGB panel: the image, then each (label, cam) overlaid on it, side by side under a title line."""
    image = _checked_rgb(image_rgb)
    height, width = tile_size(image.shape[:2], tile_height)
    if image.shape[:2] != (height, width):
        shrink = height < image.shape[0]
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    tiles = [(image_label, image)] + [(label, overlay(image, cam, colormap, alpha)) for label, cam in maps]
    return tiled_panel(tiles, title, height, width)


def tiled_panel(tiles: Sequence[tuple[str, np.ndarray]], title: str, height: int, width: int) -> np.ndarray:
    """uint8 RGB canvas: the (label, height x width tile) pairs side by side under a title line."""
    layout = PanelLayout(height, width, len(tiles))
    canvas = np.full((*layout.size, 3), BACKGROUND, dtype=np.uint8)
    _draw_text(canvas, title, (MARGIN, TITLE_HEIGHT - 9), TITLE_SCALE, layout.size[1] - 2 * MARGIN)
    for index, (label, tile) in enumerate(tiles):
        y, x = layout.tile_origin(index)
        canvas[y : y + height, x : x + width] = tile
        _draw_text(canvas, label, (x, y - 6), LABEL_SCALE, width)
    return canvas


def _draw_text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float, max_width: int) -> None:
    """Draw one line of ASCII text (others become '?'), cut with '...' to fit max_width pixels."""
    text = text.encode("ascii", "replace").decode("ascii")
    fitted = text
    while text and cv2.getTextSize(fitted, FONT, scale, 1)[0][0] > max_width:
        text = text[:-1]
        fitted = text.rstrip() + "..."
    cv2.putText(canvas, fitted, origin, FONT, scale, TEXT_COLOR, 1, cv2.LINE_AA)
