"""Clear reasons where fusioncam used to give vague ones: non-ASCII file names keep their name in the outputs, the
API takes "gradcam,fusion" as the CLI and the server do, and OpenCV's own log lines about a bad image are silenced
where fusioncam reports the problem itself."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

import fusioncam
from fusioncam.cli.main import main
from fusioncam.errors import InputError
from fusioncam.images import load_batch, read_rgb
from fusioncam.report.explain_folder import unique_names
from tests.support.safety_helpers import SIZE, tiny_bundle, write_images


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("vague"))


def test_non_ascii_names_are_kept_and_made_safe():
    assert unique_names(["猫.png", "Ünïcödé.jpg", "e\u0301te\u0301.png", "a:b?<c>.png", "😀.png", "Ünïcödé.png"]) == [
        "猫", "Ünïcödé", "été", "a_b_c", "image", "Ünïcödé_2"]
    long = unique_names(["ж" * 300 + ".png"])[0]
    assert len(long.encode("utf-8")) <= 200 and set(long) == {"ж"}


def test_cli_outputs_of_non_ascii_files_carry_their_names(bundle, tmp_path):
    images = write_images(tmp_path / "in", ["猫.png", "Ünïcödé.png"])
    out = tmp_path / "out"
    assert main(["explain", *map(str, images), "--model", str(bundle), "--out", str(out), "--device", "cpu",
                 "--methods", "gradcam"]) == 0
    record = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [image["name"] for image in record["images"]] == ["猫", "Ünïcödé"]
    assert {"猫_panel.png", "猫_gradcam.npy", "Ünïcödé_gradcam_overlay.png"} <= {p.name for p in out.iterdir()}


def test_api_takes_comma_separated_methods(bundle, tmp_path):
    batch = load_batch(write_images(tmp_path / "in", ["a.png", "b.png"]), (SIZE, SIZE))[0]
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        listed = explainer.explain(batch, methods=["gradcam", "fusion"])
        joined = explainer.explain(batch, methods="gradcam,fusion")
        spaced = explainer.explain(batch, methods=" fusion , gradcam ")
        for got in (joined, spaced):
            assert got.methods == ("gradcam", "fusion")
            for method in ("gradcam", "fusion"):
                np.testing.assert_array_equal(got.maps[method], listed.maps[method])
        with pytest.raises(InputError, match="unknown method.*fusoin"):
            explainer.explain(batch, methods="gradcam,fusoin")
        with pytest.raises(InputError, match="none given"):
            explainer.explain(batch, methods=" , ")


def test_opencv_log_lines_about_a_bad_image_are_silenced(tmp_path, capfd):
    ok, tiff = cv2.imencode(".tif", np.zeros((64, 64, 3), np.uint8))
    assert ok
    bad = tmp_path / "cut.tif"
    bad.write_bytes(tiff.tobytes()[:200])
    cv2.imdecode(np.fromfile(bad, np.uint8), cv2.IMREAD_COLOR)  # OpenCV itself logs the broken directory
    assert "[ERROR" in capfd.readouterr().err
    level = cv2.utils.logging.getLogLevel()
    with pytest.raises(InputError, match=r"cut\.tif' is corrupt or not an image format"):
        read_rgb(bad)
    assert "[ERROR" not in capfd.readouterr().err and cv2.utils.logging.getLogLevel() == level


def test_libpng_errors_join_the_one_line_error_and_warnings_of_a_good_decode_still_show(tmp_path, capfd):
    ok, png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    broken = bytearray(png.tobytes())
    broken[29] ^= 0xFF  # the IHDR chunk's CRC
    bad = tmp_path / "crc.png"
    bad.write_bytes(bytes(broken))
    cv2.imdecode(np.frombuffer(bytes(broken), np.uint8), cv2.IMREAD_COLOR)  # libpng itself prints to stderr
    assert "libpng error: IHDR: CRC error" in capfd.readouterr().err
    # The decoder's stderr is only joined to the error where that is safe (main thread, no other Python thread);
    # threads left by other tests in this process would hide it, so the read runs in a fresh interpreter.
    check = (
        "import sys\n"
        "from fusioncam.errors import InputError\n"
        "from fusioncam.images import read_rgb\n"
        "try:\n"
        "    read_rgb(sys.argv[1])\n"
        "except InputError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('NO ERROR')\n"
    )
    done = subprocess.run([sys.executable, "-c", check, str(bad)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = r"crc\.png' is corrupt .* \(the decoder said: libpng error: IHDR: CRC error\)"
    assert re.search(expected, done.stdout), done.stdout
    assert "libpng" not in done.stderr
    # a JPEG that decodes with a warning: the image comes back and the warning is not swallowed
    ok, jpeg = cv2.imencode(".jpg", (np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8))
    damaged = bytearray(jpeg.tobytes())
    damaged[len(damaged) // 2:len(damaged) // 2 + 50] = b"\xff" * 50
    path = tmp_path / "damaged.jpg"
    path.write_bytes(bytes(damaged))
    assert read_rgb(path).shape == (256, 256, 3)
    assert "Corrupt JPEG data" in capfd.readouterr().err
