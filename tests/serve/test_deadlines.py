"""Deadlines, disconnects, cancelled calls and lanes through a real `fusioncam serve` (httpx for v1, tritonclient for v2
REST and gRPC): a request past its deadline is answered 504 / DEADLINE_EXCEEDED on time and its sweep stops (the
server's CPU goes idle), a client that disconnects frees its slot, a Grad-CAM request is answered while a long
Fusion-CAM runs, and a request batched with an abandoned one still gets exactly its own maps.

The slow model is slow deterministically: 1024 channels at 64x64 served with --batch 1, so its Score-CAM sweep is
1024 scorer runs of a wide convolution (6 to 20 s here, with the load), while its Grad-CAM is one explain pass. The
deadlines that must cut a running batch are set from one Fusion-CAM timed in this process at the start (fusion_seconds),
so they fall inside the batch on a fast idle machine as on a loaded one.
"""

from __future__ import annotations

import base64
import concurrent.futures
import importlib.util
import time

import cv2
import numpy as np
import pytest

if importlib.util.find_spec("kserve") is None:
    pytest.skip("the serve extra (kserve) is not installed: pip install 'fusioncam[serve]'", allow_module_level=True)
httpx = pytest.importorskip("httpx", reason="httpx is not installed: pip install 'fusioncam[test]'")
tritonhttp = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed: pip install 'fusioncam[test]'")
tritongrpc = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

import fusioncam  # noqa: E402
from fusioncam.images import decode_rgb, preprocess, resized_rgb  # noqa: E402
from tests.serve.server_process import running_server  # noqa: E402
from tests.serve.slow_models import wide_bundle  # noqa: E402

pytestmark = pytest.mark.slow  # one server for the module; each test waits out a deadline or two

SLOW = (2048, 64)  # channels, input size: Fusion-CAM ~3.6 s on an idle 2-core EPYC (1024 took 1.8 s)
MID = (1024, 32)
IDLE_WINDOW_S = 2.0
IDLE_SHARE = 0.2  # idle: less than this share of the CPU rate the server had while its sweep ran


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deadlines")
    return {"slow": wide_bundle(folder, "slow", *SLOW), "mid": wide_bundle(folder, "mid", *MID)}


@pytest.fixture(scope="module")
def server(bundles, tmp_path_factory):
    log = tmp_path_factory.mktemp("deadlines-log") / "server.log"
    with running_server([str(bundles["slow"]), str(bundles["mid"])], ["slow", "mid"], log, "--batch", "1",
                        "--max-batch-size", "4", "--max-latency-ms", "300", "--timeout-s", "120") as running:
        yield running


@pytest.fixture(scope="module")
def explainers(bundles):
    made = {name: fusioncam.Explainer(path, device="cpu", batch_size=1) for name, path in bundles.items()}
    yield made
    for explainer in made.values():
        explainer.close()


@pytest.fixture(scope="module")
def fusion_seconds(explainers) -> dict[str, float]:
    """How long one Fusion-CAM of one image takes on each bundle in this process, on this machine now: the deadlines
    that must cut a running batch are set from it, so they cut it on a fast idle machine as on a loaded one."""
    took = {}
    for name, (_, size), repeats in (("slow", SLOW, 1), ("mid", MID, 2)):  # mid: the faster of two (warm sessions)
        for _ in range(repeats):
            started = time.monotonic()
            explainers[name].explain(model_input(png(100, size), size)[None], methods=("fusion",))
            took[name] = min(took.get(name, np.inf), time.monotonic() - started)
    print(f"one Fusion-CAM in the test process: {took}")
    assert took["slow"] > 2.2, (f"the slow model's Fusion-CAM took {took['slow']:.2f} s: too fast on this machine "
                                f"for the deadline tests (raise SLOW's channels)")
    return took


def png(seed: int, size: int) -> bytes:
    rgb = (np.random.default_rng(seed).random((size + 7, size + 3, 3)) * 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


def model_input(encoded: bytes, size: int) -> np.ndarray:
    return preprocess(resized_rgb(decode_rgb(encoded, "test"), (size, size)), (size, size))


def v1_body(encoded: bytes, methods: list[str], **parameters) -> dict:
    return {"instances": [{"data": base64.b64encode(encoded).decode()}],
            "parameters": {"methods": methods, **parameters}}


def explain_url(server, model: str) -> str:
    return f"{server.base}/v1/models/{model}:explain"


def model_label(labels: dict) -> str | None:
    return labels.get("model_name", labels.get("model"))  # KServe's label name (model_name)


def outcomes(server, model: str) -> dict[tuple[str, str], float]:
    text = httpx.get(f"{server.base}/metrics", timeout=10).text
    return {(sample.labels["method"], sample.labels["outcome"]): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == "fusioncam_requests_total" and model_label(sample.labels) == model}


def busy_rate(server, seconds: float = 1.0) -> float:
    """CPU seconds per second the server uses now (while a sweep runs: whatever share of the cores it gets)."""
    return server.cpu_over(seconds) / seconds


def assert_goes_idle(server, why: str, busy: float) -> None:
    """The server's CPU rate, from half a second on, is under IDLE_SHARE of `busy` (its rate while sweeping):
    on a shared machine the sweep's own rate is the yardstick."""
    time.sleep(0.5)  # the scorer batch in progress ends
    idle = server.cpu_over(IDLE_WINDOW_S) / IDLE_WINDOW_S
    print(f"{why}: busy {busy:.3f} CPU s/s, then {idle:.3f}")
    assert idle < IDLE_SHARE * busy, (f"{why}: the server used {idle:.2f} CPU s/s, against {busy:.2f} while its "
                                      f"sweep ran (a sweep still runs)")


def test_a_2_s_timeout_on_a_long_fusion_answers_504_within_3_s_and_the_sweep_stops(server):
    before = server.cpu_seconds()
    started = time.monotonic()
    answer = httpx.post(explain_url(server, "slow"), json=v1_body(png(1, SLOW[1]), ["fusion"], timeout=2), timeout=60)
    elapsed = time.monotonic() - started
    busy = (server.cpu_seconds() - before) / elapsed
    assert answer.status_code == 504, answer.text
    assert "timeout parameter of 2 s" in answer.json()["error"]
    assert 1.9 < elapsed < 3.0, f"answered after {elapsed:.2f} s"
    assert_goes_idle(server, "after a 504", busy)
    assert outcomes(server, "slow")[("fusion", "deadline")] >= 1


def test_grpc_deadline_and_v2_timeout_parameter_stop_the_sweep(server):
    encoded = np.array([png(2, SLOW[1])], dtype=np.object_)
    grpc = tritongrpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    tensor = tritongrpc.InferInput("image_bytes", [1], "BYTES")
    tensor.set_data_from_numpy(encoded)
    started, before = time.monotonic(), server.cpu_seconds()
    with pytest.raises(InferenceServerException) as caught:  # the client's own gRPC deadline
        grpc.infer("slow", [tensor], outputs=[tritongrpc.InferRequestedOutput("fusion")], client_timeout=2.0)
    assert "DEADLINE_EXCEEDED" in str(caught.value.status()), caught.value
    elapsed = time.monotonic() - started
    assert elapsed < 3.0
    assert_goes_idle(server, "after a gRPC deadline", (server.cpu_seconds() - before) / elapsed)

    http = tritonhttp.InferenceServerClient(f"127.0.0.1:{server.http_port}", network_timeout=60)
    tensor = tritonhttp.InferInput("image_bytes", [1], "BYTES")
    tensor.set_data_from_numpy(encoded, binary_data=True)
    started, before = time.monotonic(), server.cpu_seconds()
    with pytest.raises(InferenceServerException) as caught:  # Triton's timeout parameter: microseconds
        http.infer("slow", [tensor], outputs=[tritonhttp.InferRequestedOutput("fusion")], timeout=2_000_000)
    assert str(caught.value.status()) == "504", caught.value
    assert "timeout parameter of 2 s" in caught.value.message()
    elapsed = time.monotonic() - started
    assert elapsed < 3.0
    assert_goes_idle(server, "after a v2 timeout", (server.cpu_seconds() - before) / elapsed)


def test_a_cancelled_grpc_call_stops_its_sweep(server):
    grpc = tritongrpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    tensor = tritongrpc.InferInput("image_bytes", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([png(11, SLOW[1])], dtype=np.object_))
    cancelled_before = outcomes(server, "slow").get(("fusion", "cancelled"), 0)
    answers = []
    started, before = time.monotonic(), server.cpu_seconds()
    call = grpc.async_infer("slow", [tensor], callback=lambda result, error: answers.append((result, error)),
                            outputs=[tritongrpc.InferRequestedOutput("fusion")])
    time.sleep(1.5)  # the sweep is running
    busy = (server.cpu_seconds() - before) / (time.monotonic() - started)
    call.cancel()
    assert_goes_idle(server, "after a cancelled gRPC call", busy)
    assert outcomes(server, "slow").get(("fusion", "cancelled"), 0) == cancelled_before + 1
    assert not any(result is not None for result, _ in answers), "the cancelled call got an answer"


def test_a_queued_request_past_its_deadline_leaves_without_being_computed(server, fusion_seconds):
    def batches_of_slow() -> float:
        text = httpx.get(f"{server.base}/metrics", timeout=10).text
        return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                   if sample.name == "fusioncam_batch_images_count" and model_label(sample.labels) == "slow")

    # the running request's deadline: after the queued one's (at 1.3 s), well before its Fusion-CAM would end
    running_timeout = round(max(1.8, min(4.0, 0.7 * fusion_seconds["slow"])), 2)
    batches = batches_of_slow()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(httpx.post, explain_url(server, "slow"),
                              json=v1_body(png(3, SLOW[1]), ["fusion"], timeout=running_timeout), timeout=60)
        time.sleep(0.3)
        started = time.monotonic()
        queued = pool.submit(httpx.post, explain_url(server, "slow"),
                             json=v1_body(png(4, SLOW[1]), ["scorecam"], timeout=1), timeout=60)
        busy = busy_rate(server, 0.8)  # while the queued request waits
        assert queued.result().status_code == 504, queued.result().text
        assert time.monotonic() - started < 2.0, "a queued request is answered at its deadline, not when it runs"
        assert running.result().status_code == 504, f"the running Fusion-CAM ended within {running_timeout} s"
    assert_goes_idle(server, "after the running request's deadline (the queued one must not start)", busy)
    assert batches_of_slow() == batches, "a batch finished: the expired requests were computed"


def test_a_grad_cam_request_is_answered_while_a_long_fusion_runs(server, explainers):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        long_request = pool.submit(httpx.post, explain_url(server, "slow"),
                                   json=v1_body(png(5, SLOW[1]), ["fusion"], timeout=8), timeout=60)
        time.sleep(1.0)  # the sweep is running
        encoded = png(6, SLOW[1])
        started = time.monotonic()
        quick = httpx.post(explain_url(server, "slow"), json=v1_body(encoded, ["gradcam"]), timeout=60)
        elapsed = time.monotonic() - started
        assert not long_request.done(), "the Fusion-CAM request ended before the Grad-CAM answer"
        assert long_request.result().status_code in (200, 504)  # finished, or cut at its 8 s deadline
    assert quick.status_code == 200, quick.text
    assert elapsed < 3.0, f"Grad-CAM took {elapsed:.2f} s beside a sweep"
    want = explainers["slow"].explain(model_input(encoded, SLOW[1])[None], methods=("gradcam",)).maps["gradcam"][0]
    np.testing.assert_array_equal(np.asarray(quick.json()["explanations"][0]["maps"]["gradcam"], np.float32), want)


def test_a_client_that_disconnects_frees_its_slot(server, explainers):
    started, before = time.monotonic(), server.cpu_seconds()
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 1.5 s and closes its connection
        httpx.post(explain_url(server, "slow"), json=v1_body(png(7, SLOW[1]), ["fusion"]), timeout=1.5)
    busy = (server.cpu_seconds() - before) / (time.monotonic() - started)
    encoded = png(8, SLOW[1])
    started = time.monotonic()
    following = httpx.post(explain_url(server, "slow"), json=v1_body(encoded, ["groupcam"]), timeout=60)
    elapsed = time.monotonic() - started
    assert following.status_code == 200, following.text
    assert elapsed < 8.0, f"the following sweep-lane request waited {elapsed:.1f} s (the abandoned sweep ran on)"
    want = explainers["slow"].explain(model_input(encoded, SLOW[1])[None], methods=("groupcam",)).maps["groupcam"][0]
    np.testing.assert_array_equal(np.asarray(following.json()["explanations"][0]["maps"]["groupcam"], np.float32), want)
    assert_goes_idle(server, "after a client disconnected", busy)
    assert outcomes(server, "slow")[("fusion", "cancelled")] >= 1


def test_a_request_batched_with_an_abandoned_one_gets_exactly_its_own_maps(server, explainers, fusion_seconds):
    first, second = png(9, MID[1]), png(10, MID[1])
    # the batch of two starts when the 300 ms window closes and runs at least one single Fusion-CAM: the abandoned
    # request's deadline falls after the window, at most halfway through that call
    abandoned_timeout = round(max(0.45, 0.3 + 0.5 * fusion_seconds["mid"]), 2)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        abandoned = pool.submit(httpx.post, explain_url(server, "mid"),
                                json=v1_body(first, ["fusion"], timeout=abandoned_timeout), timeout=60)
        time.sleep(0.05)  # inside the 300 ms batching window: one Explainer call for both
        kept = pool.submit(httpx.post, explain_url(server, "mid"), json=v1_body(second, ["fusion"]), timeout=60)
        assert abandoned.result().status_code == 504, f"the batch of two ended within {abandoned_timeout} s"
        answer = kept.result()
    assert answer.status_code == 200, answer.text
    assert answer.json()["batch_images"] == 2, "the two requests were not explained in one call"
    entry = answer.json()["explanations"][0]
    want = explainers["mid"].explain(model_input(second, MID[1])[None], methods=("fusion",)).maps["fusion"][0]
    np.testing.assert_array_equal(np.asarray(entry["maps"]["fusion"], np.float32), want)
