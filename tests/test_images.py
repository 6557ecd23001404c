"""Tests of image reading and preprocessing: files written with OpenCV/PIL, exact pixel values expected back."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from fusioncam.errors import InputError
from fusioncam.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_batch,
    preprocess,
    read_rgb,
    resized_rgb,
    sample_images,
)

RNG = np.random.default_rng(0)


def test_grayscale_png_becomes_three_equal_channels(tmp_path):
    gray = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    path = tmp_path / "gray.png"
    assert cv2.imwrite(str(path), gray)
    rgb = read_rgb(path)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
    for ch in range(3):
        np.testing.assert_array_equal(rgb[:, :, ch], gray)


def test_rgb_channel_order(tmp_path):
    pixels = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(pixels, "RGB").save(path)
    np.testing.assert_array_equal(read_rgb(path), pixels)


def test_rgba_png_drops_alpha_like_pil(tmp_path):
    rgba = RNG.integers(0, 256, (4, 6, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 50, 0)  # fully transparent pixel keeps its colour, no compositing
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    rgb = read_rgb(path)
    np.testing.assert_array_equal(rgb, rgba[:, :, :3])
    np.testing.assert_array_equal(rgb, np.asarray(Image.open(path).convert("RGB")))


def test_gray_alpha_and_palette_pngs(tmp_path):
    la = RNG.integers(0, 256, (3, 5, 2), dtype=np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "la.png"), np.repeat(la[:, :, :1], 3, axis=2))
    palette = Image.fromarray(RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8)).quantize(8)
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "p.png"), np.asarray(palette.convert("RGB")))


def test_16bit_png_scales_by_257_rounded(tmp_path):
    values = np.array([[0, 128, 129, 257, 385, 386, 32896, 65535]], np.uint16)
    expect = np.array([[0, 0, 1, 1, 1, 2, 128, 255]], np.uint8)  # round(v / 257)
    assert cv2.imwrite(str(tmp_path / "g16.png"), values)
    rgb = read_rgb(tmp_path / "g16.png")
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, np.repeat(expect[:, :, None], 3, axis=2))
    # Colour with alpha: OpenCV writes BGRA; we expect RGB back, alpha dropped, each channel scaled.
    bgra = np.zeros((1, 8, 4), np.uint16)
    bgra[0, :, 0], bgra[0, :, 1], bgra[0, :, 2], bgra[0, :, 3] = values[0], values[0][::-1], 514, 7
    assert cv2.imwrite(str(tmp_path / "c16.png"), bgra)
    rgb = read_rgb(tmp_path / "c16.png")
    np.testing.assert_array_equal(rgb[0, :, 0], 2)
    np.testing.assert_array_equal(rgb[0, :, 1], expect[0][::-1])
    np.testing.assert_array_equal(rgb[0, :, 2], expect[0])


@pytest.mark.parametrize("suffix", [".hdr", ".tiff"])
def test_float_images_clip_to_unit_range(tmp_path, suffix):
    bgr = np.zeros((2, 3, 3), np.float32)
    bgr[0, 0] = (0.0, 0.5, 1.0)
    bgr[1, 2] = (2.0, 0.25, 0.75)
    assert cv2.imwrite(str(tmp_path / f"f{suffix}"), bgr)
    rgb = read_rgb(tmp_path / f"f{suffix}")
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], (255, 128, 0))
    np.testing.assert_allclose(rgb[1, 2], (191, 64, 255), atol=1)  # .hdr stores 8-bit mantissas


def _corner_image() -> np.ndarray:
    """32x48 grey image with a pure red 16x16 block in the top-left corner."""
    rgb = np.full((32, 48, 3), 128, np.uint8)
    rgb[:16, :16] = (255, 0, 0)
    return rgb


def _save_with_orientation(rgb: np.ndarray, path, orientation: int, **kwargs) -> None:
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, **kwargs)


@pytest.mark.parametrize(
    ("orientation", "shape", "corner"),
    [
        (1, (32, 48), (slice(0, 8), slice(0, 8))),  # as stored: top-left
        (3, (32, 48), (slice(-8, None), slice(-8, None))),  # rotated 180: bottom-right
        (6, (48, 32), (slice(0, 8), slice(-8, None))),  # rotate 90 clockwise to display: top-right
        (8, (48, 32), (slice(-8, None), slice(0, 8))),  # rotate 90 counter-clockwise: bottom-left
    ],
)
def test_jpeg_exif_orientation_is_applied(tmp_path, orientation, shape, corner):
    path = tmp_path / f"o{orientation}.jpg"
    _save_with_orientation(_corner_image(), path, orientation, quality=95)
    rgb = read_rgb(path)
    assert rgb.shape == (*shape, 3)
    block = rgb[corner].astype(int)
    assert (block[..., 0] > 230).all() and (block[..., 1:] < 30).all()
    assert np.abs(rgb[shape[0] // 2 + 4, shape[1] // 2 + 4].astype(int) - 128).max() < 10


def test_png_exif_orientation_is_applied_exactly(tmp_path):
    rgb = _corner_image()
    _save_with_orientation(rgb, tmp_path / "o6.png", 6)
    np.testing.assert_array_equal(read_rgb(tmp_path / "o6.png"), np.rot90(rgb, k=-1))


def test_unicode_path(tmp_path):
    rgb = RNG.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    path = tmp_path / "ünïcode 图像.png"
    Image.fromarray(rgb).save(path)
    np.testing.assert_array_equal(read_rgb(str(path)), rgb)


def test_missing_file_error_names_path(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(InputError, match="nope.png.*does not exist"):
        read_rgb(path)


def test_corrupt_and_empty_files_error_names_path(tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not an image" * 20)
    with pytest.raises(InputError, match="corrupt.jpg.*corrupt"):
        read_rgb(corrupt)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.png.*empty"):
        read_rgb(empty)


def test_directory_error_names_path(tmp_path):
    folder = tmp_path / "a_folder.png"
    folder.mkdir()
    with pytest.raises(InputError, match="a_folder.png.*directory"):
        read_rgb(folder)


def test_preprocess_matches_hand_computation_without_resize():
    rgb = np.array([[[0, 255, 128], [51, 102, 204]], [[255, 255, 255], [1, 2, 3]]], np.uint8)
    out = preprocess(rgb, (2, 2), IMAGENET_MEAN, IMAGENET_STD)
    assert out.shape == (3, 2, 2) and out.dtype == np.float32
    for ch in range(3):
        for i in range(2):
            for j in range(2):
                want = (rgb[i, j, ch] / 255.0 - IMAGENET_MEAN[ch]) / IMAGENET_STD[ch]
                assert out[ch, i, j] == pytest.approx(want, abs=1e-6)


def test_preprocess_resizes_bilinear_with_half_pixel_centres():
    row = np.array([0, 100], np.uint8)
    rgb = np.repeat(np.repeat(row[None, :, None], 3, axis=2), 1, axis=0)  # [1, 2, 3]
    up = preprocess(rgb, (1, 4), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    np.testing.assert_allclose(up[0, 0] * 255, [0, 25, 75, 100], atol=1e-4)
    wide = np.repeat(np.array([0, 10, 100, 200], np.uint8)[None, :, None], 3, axis=2)
    down = preprocess(wide, (1, 2), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    np.testing.assert_allclose(down[:, 0] * 255, [[5, 150]] * 3, atol=1e-4)
    # Height and width are not swapped: (H, W) = (3, 5).
    assert preprocess(np.zeros((7, 9, 3), np.uint8), (3, 5), IMAGENET_MEAN, IMAGENET_STD).shape == (3, 3, 5)


@pytest.mark.parametrize(
    ("rgb", "size", "mean", "std"),
    [
        (np.zeros((4, 4, 3), np.float32), (2, 2), IMAGENET_MEAN, IMAGENET_STD),
        (np.zeros((4, 4), np.uint8), (2, 2), IMAGENET_MEAN, IMAGENET_STD),
        (np.zeros((4, 4, 3), np.uint8), (0, 2), IMAGENET_MEAN, IMAGENET_STD),
        (np.zeros((4, 4, 3), np.uint8), (2,), IMAGENET_MEAN, IMAGENET_STD),
        (np.zeros((4, 4, 3), np.uint8), (2, 2), (0.5, 0.5), IMAGENET_STD),
        (np.zeros((4, 4, 3), np.uint8), (2, 2), IMAGENET_MEAN, (0.2, 0.0, 0.2)),
    ],
)
def test_preprocess_rejects_bad_arguments(rgb, size, mean, std):
    with pytest.raises(InputError):
        preprocess(rgb, size, mean, std)


def test_load_batch(tmp_path):
    a = RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    b = RNG.integers(0, 256, (20, 7), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    batch, shown = load_batch([tmp_path / "a.png", str(tmp_path / "b.png")], (8, 6), IMAGENET_MEAN, IMAGENET_STD)
    assert batch.shape == (2, 3, 8, 6) and batch.dtype == np.float32
    assert [s.shape for s in shown] == [(8, 6, 3), (8, 6, 3)] and all(s.dtype == np.uint8 for s in shown)
    np.testing.assert_array_equal(shown[0], cv2.resize(a, (6, 8), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(shown[1], resized_rgb(np.repeat(b[:, :, None], 3, axis=2), (8, 6)))
    for i in range(2):
        np.testing.assert_array_equal(batch[i], preprocess(shown[i], (8, 6), IMAGENET_MEAN, IMAGENET_STD))
    with pytest.raises(InputError, match="missing.png"):
        load_batch([tmp_path / "a.png", tmp_path / "missing.png"], (8, 6), IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(InputError):
        load_batch([], (8, 6), IMAGENET_MEAN, IMAGENET_STD)


def test_sample_images():
    images = sample_images()
    assert list(images) == ["astronaut", "chelsea", "coffee", "rocket", "motorcycle"]
    for name, rgb in images.items():
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, name
        assert rgb.std() > 10, name  # a real photo, not a blank
    assert images["chelsea"].shape == (300, 451, 3)
    assert images["motorcycle"].shape == (500, 741, 3)


def test_images_module_does_not_import_torch():
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, fusioncam.images; sys.exit(1 if 'torch' in sys.modules else 0)"
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0
