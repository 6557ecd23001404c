"""overlay and panel: exact pixel values against hand computations with cv2.applyColorMap."""

import cv2
import numpy as np
import pytest

from fusioncam import overlay
from fusioncam.errors import InputError
from fusioncam.report.pictures import BACKGROUND, PanelLayout, panel, tile_size

IMAGE = np.array(
    [[[100, 50, 200], [0, 0, 0], [255, 255, 255]],
     [[10, 20, 30], [200, 100, 0], [60, 60, 60]]], dtype=np.uint8)
CAM = np.array([[0.0, 0.5, 1.0], [0.25, 0.75, 0.1]], dtype=np.float32)


def _by_hand(image, cam, code, alpha):
    """The documented formula, step by step."""
    levels = np.rint(np.clip(cam, 0, 1) * 255).astype(np.uint8)
    heat_bgr = cv2.applyColorMap(levels, code)
    heat = heat_bgr[:, :, ::-1].astype(np.float64)
    return np.rint(alpha * heat + (1 - alpha) * image.astype(np.float64)).astype(np.uint8)


def test_overlay_matches_hand_computation_with_apply_color_map():
    got = overlay(IMAGE, CAM, colormap="jet", alpha=0.5)
    assert got.dtype == np.uint8 and got.shape == (2, 3, 3)
    np.testing.assert_array_equal(got, _by_hand(IMAGE, CAM, cv2.COLORMAP_JET, 0.5))
    # Literal pixels: JET maps level 0 to BGR (128, 0, 0), i.e. RGB (0, 0, 128), and level 255 to RGB (128, 0, 0).
    assert got[0, 0].tolist() == [50, 25, 164]  # 0.5 * (0, 0, 128) + 0.5 * (100, 50, 200)
    assert got[0, 2].tolist() == [192, 128, 128]  # 0.5 * (128, 0, 0) + 0.5 * (255, 255, 255) = 191.5 -> 192 (even)


@pytest.mark.parametrize("name, code, alpha", [("turbo", cv2.COLORMAP_TURBO, 0.3), ("VIRIDIS", cv2.COLORMAP_VIRIDIS, 0.8),
                                               ("inferno", cv2.COLORMAP_INFERNO, 1.0)])
def test_overlay_other_colormaps_and_weights(name, code, alpha):
    np.testing.assert_array_equal(overlay(IMAGE, CAM, colormap=name, alpha=alpha), _by_hand(IMAGE, CAM, code, alpha))


def test_overlay_alpha_zero_is_the_image_and_values_outside_0_1_are_clipped():
    np.testing.assert_array_equal(overlay(IMAGE, CAM, alpha=0.0), IMAGE)
    wild = CAM * 4 - 1  # values from -1 to 3
    np.testing.assert_array_equal(overlay(IMAGE, wild), _by_hand(IMAGE, np.clip(wild, 0, 1), cv2.COLORMAP_JET, 0.5))


def test_overlay_resizes_a_smaller_cam_to_the_image_bilinearly():
    image = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    small = np.array([[0.0, 1.0], [0.5, 0.2]], dtype=np.float32)
    resized = cv2.resize(small, (12, 8), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(overlay(image, small), _by_hand(image, resized, cv2.COLORMAP_JET, 0.5))


def test_overlay_errors_are_clear():
    with pytest.raises(InputError, match="unknown colormap 'rainbowz'.*jet.*turbo.*viridis"):
        overlay(IMAGE, CAM, colormap="rainbowz")
    with pytest.raises(InputError, match="uint8 RGB image"):
        overlay(IMAGE.astype(np.float32), CAM)
    with pytest.raises(InputError, match="one map"):
        overlay(IMAGE, np.stack([CAM, CAM]))
    with pytest.raises(InputError, match="NaN"):
        overlay(IMAGE, np.full((2, 3), np.nan, dtype=np.float32))
    with pytest.raises(InputError, match="alpha"):
        overlay(IMAGE, CAM, alpha=1.5)


def test_tile_size_keeps_aspect_within_limits():
    assert tile_size((300, 451), 224) == (224, 337)
    assert tile_size((512, 512), 224) == (224, 224)
    assert tile_size((1000, 10), 224) == (224, 112)
    assert tile_size((10, 1000), 224) == (224, 448)


def test_panel_has_the_layout_size_and_tiles_hold_the_image_and_overlays():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)  # already tile-sized: no resize in the panel
    cams = [rng.random((16, 16), dtype=np.float32) for _ in range(3)]
    labels = ["Grad-CAM", "Score-CAM", "Fusion-CAM"]
    result = panel(image, list(zip(labels, cams)), "Egyptian cat  p=0.771", tile_height=64)

    layout = PanelLayout(64, 96, 4)
    assert result.shape == (*layout.size, 3) and result.dtype == np.uint8
    ok, encoded = cv2.imencode(".png", result)
    decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    assert decoded.shape == result.shape

    expected_tiles = [image] + [overlay(image, cam) for cam in cams]
    for index, expected in enumerate(expected_tiles):
        y, x = layout.tile_origin(index)
        np.testing.assert_array_equal(result[y : y + 64, x : x + 96], expected)
    # Tiles differ from each other (so the comparison above could fail), and text was drawn above the tiles.
    assert not np.array_equal(expected_tiles[1], expected_tiles[3])
    first_y, _ = layout.tile_origin(0)
    header = result[:first_y]
    assert (header.min(axis=2) < 128).sum() > 50  # dark text pixels in the title and labels
    assert (header == np.array(BACKGROUND, dtype=np.uint8)).all(axis=2).mean() > 0.5


def test_panel_resizes_other_images_to_the_tile_height():
    image = np.zeros((300, 451, 3), dtype=np.uint8)
    result = panel(image, [("Fusion-CAM", np.ones((7, 7), np.float32))], "t", tile_height=224)
    assert result.shape[:2] == PanelLayout(224, 337, 2).size


def test_panel_cuts_a_long_title_to_fit():
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    result = panel(image, [], "x" * 500, tile_height=32)
    assert result.shape[:2] == PanelLayout(32, 32, 1).size
