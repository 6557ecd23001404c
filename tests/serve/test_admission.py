"""Memory admission: decoding draws on a server-wide budget, only model-size tensors are kept, and a memory
failure is the server's (503 with Retry-After), never the client's image. The amplification case of large PNGs
that compress to almost nothing, rerun at a reduced size through a real server with its RSS sampled; the budget
itself with real threads; and a real allocation failure (the server's address space capped with prlimit)."""

from __future__ import annotations

import base64
import concurrent.futures
import importlib.util
import resource
import threading
import time

import cv2
import numpy as np
import pytest

if importlib.util.find_spec("kserve") is None:
    pytest.skip("the serve extra (kserve) is not installed: pip install 'fusioncam[serve]'", allow_module_level=True)
httpx = pytest.importorskip("httpx", reason="httpx is not installed: pip install 'fusioncam[test]'")

from fusioncam.serve.pixel_budget import (  # noqa: E402
    MemoryExhausted, PixelBudget, admission_deadline, is_allocation_failure)

import fusioncam  # noqa: E402
from fusioncam.images import decode_rgb, preprocess, resized_rgb  # noqa: E402
from tests.serve.server_process import running_server  # noqa: E402
from tests.support.tiny_models import tiny_bundle_at  # noqa: E402

SIZE = 16
SIDE = 3000  # 9 megapixels, 27 MB as RGB, a few kilobytes as PNG


def big_png(side: int = SIDE, seed: int = 0) -> bytes:
    rgb = np.full((side, side, 3), 40, dtype=np.uint8)
    rng = np.random.default_rng(seed)
    for _ in range(12):  # a few flat rectangles: a map with structure, a file of a few kilobytes
        y, x = rng.integers(0, side - side // 4, size=2)
        rgb[y:y + side // 4, x:x + side // 5] = rng.integers(0, 256, size=3, dtype=np.uint8)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


# ------------------------------------------------------------------------------------------ the budget alone


def test_a_decode_waits_for_the_budget_and_is_refused_with_503_past_its_deadline():
    budget = PixelBudget(100)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with budget.reserve(80, "image A"):
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(5)
    with admission_deadline(time.monotonic() + 0.3):
        started = time.monotonic()
        with pytest.raises(MemoryExhausted) as refused:
            with budget.reserve(50, "instance 3"):
                pass
    assert 0.25 < time.monotonic() - started < 2.0
    assert "instance 3" in str(refused.value) and "--decode-budget-mib" in str(refused.value)
    assert "image itself is fine" in str(refused.value)
    with budget.reserve(20, "small"):  # fits beside the holder: no wait
        assert budget.in_use == 100
    waiter_done = threading.Event()

    def wait_then_decode() -> None:
        with admission_deadline(time.monotonic() + 10), budget.reserve(90, "instance 4"):
            waiter_done.set()

    waiter = threading.Thread(target=wait_then_decode)
    waiter.start()
    time.sleep(0.2)
    assert not waiter_done.is_set(), "the decode did not wait for the budget"
    release.set()
    waiter.join(5)
    holder.join(5)
    assert waiter_done.is_set() and budget.in_use == 0 and budget.peak == 100
    with budget.reserve(10_000, "huge"):  # one image alone may take the whole budget
        assert budget.in_use == 100


def test_allocation_failures_are_recognised_and_bad_images_are_not():
    assert is_allocation_failure("OpenCV(4.10.0) ... error: (-4:Insufficient memory) Failed to allocate 118800000 bytes")
    assert is_allocation_failure("Cannot allocate memory")
    assert not is_allocation_failure("image file 'instance 0' is corrupt: the PNG's IDAT chunk is cut short")


# ------------------------------------------------------------------------------------- through a real server


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle_at(tmp_path_factory.mktemp("admission"), size=SIZE, seed=11)


def v1_body(encoded: bytes, count: int) -> dict:
    return {"instances": [{"data": base64.b64encode(encoded).decode()}] * count,
            "parameters": {"methods": ["gradcam"]}}


def sample_peak_rss(server, stop: threading.Event, peaks: list) -> None:
    peak = 0.0
    while not stop.is_set():
        peak = max(peak, server.rss_mib())
        time.sleep(0.01)
    peaks.append(peak)


@pytest.mark.slow
def test_concurrent_requests_of_large_pngs_are_answered_within_a_bounded_memory(bundle, tmp_path):
    # three requests of 8 copies of a 9-megapixel PNG: kept as decoded pictures, 24 x 27 MB = 650 MB; with the
    # budget (64 MiB: one decode at a time) and only the tensors kept, a few decodes' worth
    encoded = big_png()
    assert len(encoded) < 200_000
    with fusioncam.Explainer(bundle, device="cpu") as alone:
        image = preprocess(resized_rgb(decode_rgb(encoded, "big"), (SIZE, SIZE)), (SIZE, SIZE))
        want = alone.explain(image[None], methods=("gradcam",)).maps["gradcam"][0]
    with running_server([str(bundle)], ["tiny"], tmp_path / "server.log", "--decode-budget-mib", "64") as server:
        small = httpx.post(f"{server.base}/v1/models/tiny:explain", json=v1_body(big_png(400), 1), timeout=60)
        assert small.status_code == 200, small.text
        before = server.rss_mib()
        stop, peaks = threading.Event(), []
        sampler = threading.Thread(target=sample_peak_rss, args=(server, stop, peaks))
        sampler.start()
        try:
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                answers = list(pool.map(lambda _: httpx.post(f"{server.base}/v1/models/tiny:explain",
                                                             json=v1_body(encoded, 8), timeout=120), range(3)))
        finally:
            stop.set()
            sampler.join()
    for answer in answers:
        assert answer.status_code == 200, answer.text
        for entry in answer.json()["explanations"]:
            np.testing.assert_allclose(np.asarray(entry["maps"]["gradcam"], np.float32), want, atol=1e-5)
    growth = peaks[0] - before
    print(f"server RSS {before:.0f} MiB before, peak {peaks[0]:.0f} MiB during the requests")
    assert growth < 250, f"the server's RSS grew by {growth:.0f} MiB for 24 decodes of 27 MB each"


@pytest.mark.slow
def test_a_real_allocation_failure_is_a_503_not_the_clients_fault(bundle, tmp_path):
    encoded = big_png(6000)  # 36 megapixels: about 216 MB to decode
    with running_server([str(bundle)], ["tiny"], tmp_path / "server.log") as server:
        pid = server.process.pid
        vm_size = next(int(line.split()[1]) * 1024 for line in open(f"/proc/{pid}/status") if line.startswith("VmSize:"))
        previous = resource.prlimit(pid, resource.RLIMIT_AS)
        resource.prlimit(pid, resource.RLIMIT_AS, (vm_size + 150 * 2**20, previous[1]))  # 150 MiB more address space
        try:
            answer = httpx.post(f"{server.base}/v1/models/tiny:explain", json=v1_body(encoded, 1), timeout=60)
        finally:
            resource.prlimit(pid, resource.RLIMIT_AS, previous)
        assert answer.status_code == 503, answer.text
        assert "retry-after" in answer.headers
        assert "memory" in answer.json()["error"] and "not a problem of the image" in answer.json()["error"]
        after = httpx.post(f"{server.base}/v1/models/tiny:explain", json=v1_body(big_png(400), 1), timeout=60)
        assert after.status_code == 200, after.text
