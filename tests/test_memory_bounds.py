"""Bounded memory by construction, measured: a decompression bomb is refused from its header, a huge JPEG is decoded
reduced, and an overlay of a large image is bounded; peak RSS is taken in a child process, never timed. The child
reads its own high-water mark, VmHWM in /proc/self/status: getrusage's ru_maxrss would start at this pytest
process's size (Linux keeps the maximum across fork and exec), VmHWM belongs to the child's own address space."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from fusioncam.errors import InputError
from fusioncam.images import DEFAULT_MAX_IMAGE_PIXELS, MAX_PIXELS_ENV, decode_rgb, max_image_pixels, read_rgb
from tests.support.huge_images import write_huge_jpeg, write_png_bomb

MIB = 2**20


def peak_rss_of(code: str, env: dict | None = None) -> dict:
    """Run `code` in a fresh Python; it sets `result` (a dict); return it with the child's peak RSS after its imports
    (`baseline_mib`) and at the end (`peak_mib`), from the child's own VmHWM."""
    script = textwrap.dedent("""
        import json
        import cv2, numpy as np
        from fusioncam.errors import FusionCamError
        from fusioncam.images import read_rgb
        def high_water_kib():
            with open("/proc/self/status") as status:
                return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
        baseline = high_water_kib()
        result = {}
    """) + textwrap.dedent(code) + textwrap.dedent("""
        result["baseline_mib"] = baseline / 1024
        result["peak_mib"] = high_water_kib() / 1024
        print(json.dumps(result))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def png_bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    write_png_bomb(path, 20000)
    return path


@pytest.mark.slow
def test_a_20000x20000_png_is_refused_from_its_header_within_20_mib(png_bomb):
    assert png_bomb.stat().st_size < 2 * MIB  # 400 megapixels, 1.2 GB as RGB, in under 2 MB
    measured = peak_rss_of(f"""
        try:
            read_rgb({str(png_bomb)!r})
        except FusionCamError as exc:
            result["error"] = str(exc)
    """)
    assert "20000x20000 pixels" in measured["error"] and "400.0 megapixels" in measured["error"]
    assert "over the limit of 150.0 megapixels" in measured["error"] and MAX_PIXELS_ENV in measured["error"]
    assert measured["peak_mib"] - measured["baseline_mib"] < 20, measured  # decoding would need > 1200 MiB


@pytest.mark.slow
def test_the_cli_skips_the_bomb_with_one_line_within_its_normal_footprint(png_bomb, tmp_path):
    """fusioncam explain on the bomb and a normal image: the bomb is skipped by name (exit 1), the other explained;
    the whole CLI process peaks far below the 1.2 GB the bomb would decode to."""
    from tests.support.tiny_models import save, tiny_classifier

    model = save(tiny_classifier(size=8), tmp_path / "tiny.onnx")
    cv2.imwrite(str(tmp_path / "fine.png"), np.full((20, 30, 3), 90, np.uint8))
    measured = peak_rss_of(f"""
        from fusioncam.cli.main import main
        import contextlib, io
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            result["code"] = main(["explain", {str(png_bomb)!r}, {str(tmp_path / "fine.png")!r}, "--model",
                                   {model!r}, "--device", "cpu", "--out", {str(tmp_path / "out")!r}])
        result["stderr"] = err.getvalue()
    """)
    assert measured["code"] == 1, measured
    assert "bomb.png" in measured["stderr"] and "over the limit of 150.0 megapixels" in measured["stderr"]
    assert "Traceback" not in measured["stderr"]
    assert (tmp_path / "out" / "fine_overlay.png").is_file()
    assert measured["peak_mib"] < 600, measured  # python, NumPy, OpenCV and ONNX Runtime; the bomb alone is 1200


@pytest.mark.slow
def test_a_9000x9000_jpeg_is_decoded_at_half_size_in_a_quarter_of_the_memory(tmp_path):
    path = tmp_path / "huge.jpg"
    write_huge_jpeg(path, 9000)
    reduced = peak_rss_of(f"""
        image = read_rgb({str(path)!r}, max_side=4096)
        result["shape"] = list(image.shape)
    """)
    full = peak_rss_of(f"""
        image = read_rgb({str(path)!r})
        result["shape"] = list(image.shape)
    """)
    assert reduced["shape"] == [4500, 4500, 3] and full["shape"] == [9000, 9000, 3]
    reduced_rise = reduced["peak_mib"] - reduced["baseline_mib"]
    full_rise = full["peak_mib"] - full["baseline_mib"]
    assert full_rise > 230  # 9000 x 9000 x 3 bytes = 232 MiB, at least once
    assert reduced_rise < 0.4 * full_rise, (reduced_rise, full_rise)


def test_reduced_jpeg_decode_matches_opencv_reduced_decode_and_keeps_the_side_asked_for():
    rgb = np.random.default_rng(0).integers(0, 256, (300, 700, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", rgb)
    for max_side, expected_shape, flag in ((40, (38, 88, 3), cv2.IMREAD_REDUCED_COLOR_8),  # 1/8: the smallest
                                           (88, (38, 88, 3), cv2.IMREAD_REDUCED_COLOR_8),
                                           (89, (75, 175, 3), cv2.IMREAD_REDUCED_COLOR_4),
                                           (175, (75, 175, 3), cv2.IMREAD_REDUCED_COLOR_4),
                                           (176, (150, 350, 3), cv2.IMREAD_REDUCED_COLOR_2),
                                           (351, (300, 700, 3), None)):
        got = decode_rgb(data.tobytes(), "x.jpg", max_side=max_side)
        assert got.shape == expected_shape, max_side
        if flag is not None:
            np.testing.assert_array_equal(got, cv2.cvtColor(cv2.imdecode(data, flag), cv2.COLOR_BGR2RGB))


def test_pixel_limit_comes_from_the_argument_then_the_environment(monkeypatch):
    ok, data = cv2.imencode(".png", np.zeros((30, 40, 3), np.uint8))
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    assert max_image_pixels() == DEFAULT_MAX_IMAGE_PIXELS == 150_000_000
    with pytest.raises(InputError, match=r"'p.png' is 40x30 pixels, 0.0 megapixels, over the limit of 0.0 megapixels"):
        decode_rgb(data.tobytes(), "p.png", max_pixels=1199)
    assert decode_rgb(data.tobytes(), "p.png", max_pixels=1200).shape == (30, 40, 3)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(InputError, match=f"{MAX_PIXELS_ENV}=1200"):
        decode_rgb(data.tobytes(), "p.png")
    assert decode_rgb(data.tobytes(), "p.png", max_pixels=5000).shape == (30, 40, 3)  # the argument wins
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(InputError, match=f"environment variable {MAX_PIXELS_ENV} must be a positive whole number"):
        decode_rgb(data.tobytes(), "p.png")


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".webp", ".tiff", ".ppm", ".jp2", ".gif", ".hdr"])
def test_every_format_is_limited_before_decoding(tmp_path, suffix, monkeypatch):
    """The header's size is what the limit sees: one pixel under it the image decodes, at it it is refused."""
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    image = np.zeros((40, 48, 3), np.float32 if suffix == ".hdr" else np.uint8)
    path = tmp_path / f"image{suffix}"
    assert cv2.imwrite(str(path), image)
    assert read_rgb(path, max_pixels=40 * 48).shape == (40, 48, 3)
    with pytest.raises(InputError, match=r"is 48x40 pixels"):
        read_rgb(path, max_pixels=40 * 48 - 1)


def test_overlay_of_a_large_image_is_capped_and_equals_the_overlay_of_the_shrunk_image():
    from fusioncam.report.pictures import OVERLAY_MAX_SIDE, overlay

    image = np.random.default_rng(1).integers(0, 256, (5000, 300, 3), dtype=np.uint8)
    cam = np.random.default_rng(2).random((7, 7)).astype(np.float32)
    got = overlay(image, cam)
    assert OVERLAY_MAX_SIDE == 4096 and got.shape == (4096, 246, 3)
    shrunk = cv2.resize(image, (246, 4096), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(got, overlay(shrunk, cam, max_side=None))
    assert overlay(image, cam, max_side=None).shape == image.shape


@pytest.mark.slow
def test_overlay_peak_memory_per_pixel_is_bounded():
    """The banded overlay of a 4096 x 4096 image peaks at under 16 bytes per pixel over the image itself (it was
    about 80: three float64 copies of the whole image)."""
    measured = peak_rss_of("""
        from fusioncam.report.pictures import overlay
        image = np.random.default_rng(0).integers(0, 256, (4096, 4096, 3), dtype=np.uint8)
        cam = np.random.default_rng(1).random((7, 7)).astype(np.float32)
        before = high_water_kib()
        overlay(image, cam)
        after = high_water_kib()
        result["bytes_per_pixel"] = (after - before) * 1024 / (4096 * 4096)
    """)
    assert measured["bytes_per_pixel"] < 16, measured
