"""`python -m benchmarks.serve_load`: `fusioncam serve` under load, against offline Explainer.explain, in one run.

A bounded asyncio load generator (aiohttp, 127.0.0.1 only) drives a real `fusioncam serve` subprocess with 1, 4,
16 and 64 concurrent clients, each sending single images over Open Inference Protocol v2 REST (a base64 PNG in
JSON, or with --input tensor-binary a preprocessed FP32 tensor in the binary-tensor extension; every body is built
before the load starts, so the clients cost little) and getting the map back as a binary tensor, Grad-CAM only and
Fusion-CAM, every tenth request malformed (a corrupt image, a tensor of the wrong shape, an unknown output), which
must be answered 400. Every good answer is checked against the map Explainer.explain gives for the same image
alone (1e-5): a map equal to another pool image's map counts as crossed, any other mismatch as wrong; a request
without an answer is lost. Reported per phase: throughput (good answers per second), p50/p99 latency, the batch
sizes the server formed (its Prometheus histogram), the server's and the clients' CPU time per request, the load
average, the server's RSS over time, and the offline Explainer.explain throughput measured in the same run around
the phase (the server idle): at the batch size the server formed, and at --max-batch-size right before and right
after the phase. JSON and markdown land in benchmarks/results/serve-<model>[-<input>]-<machine>.{json,md}.

With --mixed: fairness between the server's lanes. A Grad-CAM-only phase and a mixed phase (90% Grad-CAM, 10%
Fusion-CAM, no malformed requests) at the same client count, one after the other against the same server, every
answer checked; then, with --compare-one-lane, the mixed phase again against a server started with
--gradient-workers 0 (every request in one FIFO lane, as before lanes existed). Reported: each method's p50/p99
latency and the Grad-CAM p99 of the mixed phase over that of the Grad-CAM-only phase (target: at most 2x).
Results in benchmarks/results/serve-mixed-<model>-<machine>.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import importlib.metadata
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

import fusioncam
from fusioncam.bundle_cache import default_bundle
from fusioncam.images import decode_rgb, preprocess, resized_rgb, sample_images
from fusioncam.runtime.cpu_backend import CPU_SPINNING_ENV, CPU_THREADS_ENV

from .report import RESULTS, cpu_label, cpu_model, save_report

METHOD_SETS = {"gradcam": ("gradcam",), "fusion": ("fusion",)}
TOLERANCE = 1e-5
MALFORMED_EVERY = 10  # every tenth request is malformed: 10%
DEFAULT_REQUESTS = {  # (method, clients) -> requests: 10,000 in all for the small model
    "small": {("gradcam", 1): 400, ("gradcam", 4): 1200, ("gradcam", 16): 3200, ("gradcam", 64): 4000,
              ("fusion", 1): 30, ("fusion", 4): 120, ("fusion", 16): 400, ("fusion", 64): 650},
    "efficientnet_lite0": {("gradcam", 1): 40, ("gradcam", 4): 120, ("gradcam", 16): 320, ("gradcam", 64): 640,
                           ("fusion", 1): 3, ("fusion", 4): 8, ("fusion", 16): 32, ("fusion", 64): 64},
}


def machine_facts() -> dict:
    """CPU model and cores, the versions that matter, and the commit: what a number was measured on."""
    versions = {name: importlib.metadata.version(name)
                for name in ("fusioncam", "onnxruntime", "numpy", "kserve", "aiohttp")}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "fusioncam", "benchmarks/serve_load.py"],
                           capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], check=False).stdout.strip()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(), "versions": versions,
            "load_average_1_5_15_min_at_end": [round(v, 1) for v in os.getloadavg()],
            "commit": commit + ("+uncommitted changes" if dirty else ""), "date": datetime.date.today().isoformat()}


# ------------------------------------------------------------------------------------------------ the model


def small_bundle():
    """A seeded random 3-conv CNN at 64x64 (K = 64 at 8x8, 10 classes), exported once into the cache."""
    import torch

    from fusioncam.bundle_cache import module_bundle

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    return module_bundle(net, "5", (64, 64), [f"class {i}" for i in range(10)])


def image_pool(size: int, count: int, seed: int = 0) -> list[bytes]:
    """`count` distinct PNG images: crops and flips of the five sample photos, about twice the model's size."""
    rng = np.random.default_rng(seed)
    photos = list(sample_images().values())
    pool = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 2, min(h, w)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = photo[top:top + side, left:left + side][:, ::-1 if i % 2 else 1]
        crop = cv2.resize(np.ascontiguousarray(crop), (2 * size, 2 * size), interpolation=cv2.INTER_AREA)
        ok, png = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        pool.append(png.tobytes())
    return pool


def model_inputs(pool: list[bytes], size: tuple[int, int], manifest) -> np.ndarray:
    """The pool as the server preprocesses it (fusioncam.images on the same bytes)."""
    return np.stack([preprocess(resized_rgb(decode_rgb(png, f"pool {i}"), size), size, manifest.mean, manifest.std)
                     for i, png in enumerate(pool)])


def offline_throughput(explainer, images: np.ndarray, methods: tuple[str, ...], batch: int, budget_s: float) -> dict:
    """Explainer.explain on batches of `batch` pool images (warm: the same shapes ran before; at least one call,
    more while within the budget): images per second, and the CPU milliseconds per image this process used."""
    done, calls = 0, 0
    cpu, start = own_cpu_seconds(), time.perf_counter()
    while calls < 1 or time.perf_counter() - start < budget_s:
        rows = [(calls * batch + j) % len(images) for j in range(batch)]
        explainer.explain(images[rows], methods=methods)
        done += batch
        calls += 1
    wall = time.perf_counter() - start
    return {"batch": batch, "images_per_s": done / wall, "cpu_ms_per_image": 1000 * (own_cpu_seconds() - cpu) / done,
            "load_average_1_min": round(os.getloadavg()[0], 1)}


# ----------------------------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(bundle_path: str, http_port: int, grpc_port: int, args, log: Path,
                 extra: tuple[str, ...] = ()) -> subprocess.Popen:
    command = [sys.executable, "-m", "fusioncam", "serve", bundle_path, "--name", "m", "--host", "127.0.0.1",
               "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--device", "cpu",
               "--max-batch-size", str(args.max_batch_size), "--max-latency-ms", str(args.max_latency_ms),
               "--max-queue", "512", "--max-instances", "4", "--stop-after", str(args.server_lifetime),  # > 64 clients' images
               *extra]
    sink = open(log, "wb")
    return subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def batch_histogram(text: str) -> dict:
    """The fusioncam_batch_images histogram of model m: cumulative bucket counts, sum and count."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {"buckets": {}, "sum": 0.0, "count": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name != "fusioncam_batch_images":
            continue
        for sample in family.samples:
            if sample.labels.get("model_name") != "m":
                continue
            if sample.name.endswith("_bucket"):
                out["buckets"][sample.labels["le"]] = sample.value
            elif sample.name.endswith("_sum"):
                out["sum"] = sample.value
            elif sample.name.endswith("_count"):
                out["count"] = sample.value
    return out


def batch_sizes_between(before: dict, after: dict) -> dict:
    """Batches formed between two histogram readings: how many, the mean size, and how many per size bucket."""
    count = after["count"] - before["count"]
    images = after["sum"] - before["sum"]
    per_bucket, previous = {}, 0.0
    for le, value in after["buckets"].items():
        cumulative = value - before["buckets"].get(le, 0.0)
        if cumulative - previous > 0:
            per_bucket[le] = int(cumulative - previous)
        previous = cumulative
    return {"batches": int(count), "images": int(images), "mean": images / count if count else 0.0,
            "per_size_bucket": per_bucket}


# ------------------------------------------------------------------------------------------------ the load


INPUT_FORMS = ("png-base64", "tensor-binary")
MALFORMED_KINDS = ("corrupt image", "wrong shape", "unknown output")
JSON_HEADERS = {"content-type": "application/json"}


def _outputs(methods: tuple[str, ...]) -> list[dict]:
    return [{"name": name, "parameters": {"binary_data": True}} for name in (*methods, "explained_class")]


def request_body(kind: str, encoded: bytes, methods: tuple[str, ...], size: tuple[int, int]) -> bytes:
    """A v2 JSON request, serialised once: one base64 PNG (or a malformed request), the map and the class back as
    binary tensors."""
    outputs = _outputs(methods)
    if kind == "good":
        inputs = [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(encoded).decode()]}]
    elif kind == "corrupt image":
        inputs = [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                   "data": [base64.b64encode(b"\x89PNG\r\n\x1a\n" + encoded[100:300]).decode()]}]
    elif kind == "wrong shape":
        inputs = [{"name": "image_tensor", "shape": [1, 3, size[0] // 2, size[1]], "datatype": "FP32",
                   "data": [0.0] * (3 * (size[0] // 2) * size[1])}]
    else:  # unknown output
        inputs = [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(encoded).decode()]}]
        outputs = [{"name": "lime"}]
    return json.dumps({"inputs": inputs, "outputs": outputs}).encode()


def binary_tensor_body(image: np.ndarray, methods: tuple[str, ...]) -> tuple[bytes, dict]:
    """A v2 request in the binary-tensor extension (what tritonclient sends): a JSON header naming one FP32
    [1, 3, H, W] preprocessed image, then its raw bytes; the answer's tensors binary too."""
    raw = np.ascontiguousarray(image[None], dtype=np.float32).tobytes()
    header = json.dumps({"inputs": [{"name": "image_tensor", "shape": [1, *image.shape], "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": _outputs(methods)}).encode()
    return header + raw, {"content-type": "application/octet-stream",
                          "inference-header-content-length": str(len(header))}


def request_bodies(form: str, pool: list[bytes], images: np.ndarray, methods: tuple[str, ...],
                   size: tuple[int, int]) -> tuple[list[tuple[bytes, dict]], dict[str, tuple[bytes, dict]]]:
    """Every request body built before the load starts (the clients only send them): one good body per pool
    image in the chosen input form, and one body per malformed kind."""
    if form == "png-base64":
        good = [(request_body("good", png, methods, size), JSON_HEADERS) for png in pool]
    else:
        good = [binary_tensor_body(image, methods) for image in images]
    bad = {kind: (request_body(kind, pool[0], methods, size), JSON_HEADERS) for kind in MALFORMED_KINDS}
    return good, bad


def binary_outputs(headers, body: bytes) -> dict[str, np.ndarray]:
    """The outputs of a v2 binary-tensor response (JSON header, then each tensor's raw bytes in order)."""
    header_length = int(headers["inference-header-content-length"])
    header = json.loads(body[:header_length])
    arrays, offset = {}, header_length
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        dtype = {"FP32": np.float32, "INT64": np.int64}[output["datatype"]]
        arrays[output["name"]] = np.frombuffer(body[offset:offset + size], dtype=dtype).reshape(output["shape"])
        offset += size
    return arrays


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


async def run_phase(base: str, pid: int, bodies: tuple[list, dict], references: np.ndarray, methods: tuple[str, ...],
                    clients: int, total: int, rss_samples: list) -> dict:
    """`clients` concurrent clients (aiohttp, one keep-alive connection each) send `total` pre-built requests (every
    tenth malformed); every answer is checked. The benchmark process's own CPU time in the phase is the clients'."""
    import aiohttp

    good_bodies, bad_bodies = bodies
    counters = {"good_ok": 0, "malformed_400": 0, "wrong": 0, "crossed": 0, "lost": 0, "unexpected_status": 0}
    latencies: list[float] = []
    next_index = 0
    method = methods[0]
    flat_refs = references.reshape(len(references), -1)
    url = f"{base}/v2/models/m/infer"

    async def client(session) -> None:
        nonlocal next_index
        while next_index < total:
            k = next_index
            next_index += 1
            malformed = k % MALFORMED_EVERY == MALFORMED_EVERY - 1
            image = k % len(good_bodies)
            if malformed:
                body, headers = bad_bodies[MALFORMED_KINDS[(k // MALFORMED_EVERY) % len(MALFORMED_KINDS)]]
            else:
                body, headers = good_bodies[image]
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    status, answer, answer_headers = response.status, await response.read(), response.headers
            except (aiohttp.ClientError, asyncio.TimeoutError):
                counters["lost"] += 1
                continue
            elapsed = time.perf_counter() - started
            if malformed:
                counters["malformed_400" if status == 400 else "unexpected_status"] += 1
                continue
            if status != 200:
                counters["unexpected_status"] += 1
                continue
            latencies.append(elapsed)
            got = binary_outputs(answer_headers, answer)[method].reshape(-1)
            if np.abs(got - flat_refs[image]).max() <= TOLERANCE:
                counters["good_ok"] += 1
            elif (np.abs(flat_refs - got).max(axis=1) <= TOLERANCE).any():
                counters["crossed"] += 1
            else:
                counters["wrong"] += 1

    async def sample_rss(stop: asyncio.Event) -> None:
        while not stop.is_set():
            rss_samples.append((round(time.monotonic(), 2), round(rss_mib(pid), 1)))
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=1200)) as session:
        async with session.get(f"{base}/metrics") as response:
            before = batch_histogram(await response.text())
        load_start = os.getloadavg()[0]
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(stop))
        client_cpu, server_cpu = own_cpu_seconds(), process_cpu_seconds(pid)
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        wall = time.perf_counter() - started
        client_cpu, server_cpu = own_cpu_seconds() - client_cpu, process_cpu_seconds(pid) - server_cpu
        stop.set()
        await sampler
        async with session.get(f"{base}/metrics") as response:
            after = batch_histogram(await response.text())
    good = counters["good_ok"] + counters["wrong"] + counters["crossed"]
    return {
        "methods": list(methods), "clients": clients, "requests": total, "malformed": total // MALFORMED_EVERY,
        **counters, "seconds": wall, "throughput_images_per_s": good / wall,
        "p50_s": float(np.percentile(latencies, 50)) if latencies else None,
        "p99_s": float(np.percentile(latencies, 99)) if latencies else None,
        "batches": batch_sizes_between(before, after), "rss_mib_end": rss_mib(pid),
        "client_cpu_s": client_cpu, "server_cpu_s": server_cpu,
        "client_cpu_share_of_machine": client_cpu / (wall * (os.cpu_count() or 1)),
        "server_cpu_ms_per_request": 1000 * server_cpu / total, "client_cpu_ms_per_request": 1000 * client_cpu / total,
        "load_average_1_min_start_end": [round(load_start, 1), round(os.getloadavg()[0], 1)],
    }


# ------------------------------------------------------------------------------------------------- the run


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def cpu_ratio(row: dict) -> float | None:
    """Offline CPU time per image over the server's and clients' CPU time per good answer (malformed requests'
    cost included): the throughput ratio two CPU-bound runs would have on the same cores, whatever share of the
    machine other jobs took."""
    good = row["good_ok"] + row["wrong"] + row["crossed"]
    serving_ms = 1000 * (row["server_cpu_s"] + row["client_cpu_s"]) / good if good else 0.0
    return row["offline_at_formed_batch"]["cpu_ms_per_image"] / serving_ms if serving_ms > 0 else None


def markdown(report: dict) -> str:
    m = report["machine"]
    offline_max = ", ".join(report["offline_max_batch_methods"]) or "none"
    lines = [
        f"# fusioncam serve under load: {report['model']} ({report['input_size'][0]}x{report['input_size'][1]}, "
        f"K = {report['channels']}), CPU",
        "",
        f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f"; commit {m['commit']}; {m['date']}. "
        f"Shared machine: other jobs ran beside this one; the 1-minute load average at the start and end of every "
        f"phase is in its row (2 cores).",
        "",
        f"Server: `fusioncam serve --device cpu --max-batch-size {report['max_batch_size']} --max-latency-ms "
        f"{report['max_latency_ms']}`, one inference worker. Clients: aiohttp asyncio in the benchmark process on the "
        f"same machine (127.0.0.1, one keep-alive connection per client), request bodies built before the load "
        f"({report['input_form']}: {INPUT_FORM_TEXT[report['input_form']]}), every 10th request malformed (must be "
        f"answered 400), the map and class back as binary tensors. Offline: Explainer.explain(device='cpu') in the "
        f"benchmark process on the same preprocessed pool images, the same Explainer settings as the server's (default "
        f"batch_size, ONNX Runtime intra-op threads = {report['ort_intra_op_threads']}, intra-op spinning "
        f"{'on' if report['ort_allow_spinning'] else 'off'}), measured right after each "
        f"phase at the mean batch size the server formed (rounded) and, for {offline_max}, at --max-batch-size "
        f"both right before and right after the phase (mean of the two). CPU columns: the server process's and the "
        f"clients' CPU milliseconds per request (user + system) and the offline Explainer's CPU milliseconds per image; "
        f"CPU ratio: offline CPU per image at the formed batch over server + client CPU per good answer (what the "
        f"throughput ratio would be if both ran CPU-bound on the same cores, whatever share other jobs took).",
        "",
        "| methods | clients | requests (malformed) | good answers / s | offline at formed batch b / s | ratio | "
        "offline at max batch / s | ratio | p50 s | p99 s | mean batch | CPU ms: server / client per request, offline "
        "per image | CPU ratio | load avg start, end | lost / wrong / crossed / unexpected | server RSS MiB (end) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for row in report["phases"]:
        formed, top = row["offline_at_formed_batch"], row.get("offline_at_max_batch")
        lines.append(
            f"| {'+'.join(row['methods'])} | {row['clients']} | {row['requests']} ({row['malformed']}) | "
            f"{row['throughput_images_per_s']:.2f} | {formed['images_per_s']:.2f} (b = {formed['batch']}) | "
            f"{_ratio(row['ratio_to_offline_at_formed_batch'])} | "
            f"{'-' if top is None else format(top['images_per_s'], '.2f') + ' (b = ' + str(top['batch']) + ')'} | "
            f"{_ratio(row.get('ratio_to_offline_at_max_batch'))} | {row['p50_s']:.3f} | {row['p99_s']:.3f} | "
            f"{row['batches']['mean']:.1f} | {row['server_cpu_ms_per_request']:.1f} / {row['client_cpu_ms_per_request']:.1f}"
            f", {formed['cpu_ms_per_image']:.1f} | {_ratio(cpu_ratio(row))} | {row['load_average_1_min_start_end'][0]}, "
            f"{row['load_average_1_min_start_end'][1]} | {row['lost']} / {row['wrong']} / {row['crossed']} / "
            f"{row['unexpected_status']} | {row['rss_mib_end']:.0f} |")
    totals = report["totals"]
    lines += ["", f"Totals: {totals['requests']} requests, {totals['good_ok']} correct maps, {totals['malformed_400']} "
              f"malformed answered 400; lost {totals['lost']}, wrong {totals['wrong']}, crossed {totals['crossed']}, "
              f"unexpected status {totals['unexpected_status']}. Server RSS after warm-up "
              f"{report['rss_after_warm_up_mib']:.0f} MiB, at the end {report['rss_end_mib']:.0f} MiB, "
              f"peak {report['rss_peak_mib']:.0f} MiB."]
    return "\n".join(lines) + "\n"


INPUT_FORM_TEXT = {
    "png-base64": "v2 JSON, one PNG photo crop at twice the model's input size, base64",
    "tensor-binary": "v2 binary-tensor extension as tritonclient sends it, one preprocessed FP32 [1, 3, H, W] image",
}


def model_label(args) -> str:
    return "seeded random 3-conv CNN" if args.model == "small" else args.model


def result_stem(prefix: str, args) -> str:
    model = "small-cnn" if args.model == "small" else args.model
    form = "" if args.input == "png-base64" else f"-{args.input}"
    spinning = "" if os.environ.get(CPU_SPINNING_ENV) == "0" else "-ort-spinning"
    tag = f"-{args.tag}" if args.tag else ""
    return f"{prefix}-{model}{form}{spinning}{tag}-{cpu_label()}"


def steady_run(args, base: str, pid: int, bodies: dict, references: dict) -> None:
    """Is the server's memory flat at a steady load? The same request mix in 8 chunks; RSS after each one."""
    name, clients = args.methods[0], args.clients[-1]
    chunks = []
    for _ in range(8):
        row = asyncio.run(run_phase(base, pid, bodies[name], references[name], METHOD_SETS[name], clients,
                                    args.steady // 8, []))
        chunks.append({key: row[key] for key in ("requests", "good_ok", "malformed_400", "lost", "wrong", "crossed",
                                                 "unexpected_status", "throughput_images_per_s", "rss_mib_end",
                                                 "load_average_1_min_start_end")})
        print(json.dumps(chunks[-1]), flush=True)
    report = {"model": model_label(args), "methods": list(METHOD_SETS[name]), "input_form": args.input,
              "clients": clients, "chunks": chunks, "machine": machine_facts(),
              "command": "python -m benchmarks.serve_load " + " ".join(sys.argv[1:])}
    rss = [chunk["rss_mib_end"] for chunk in chunks]
    text = (f"# fusioncam serve: server RSS at a steady load ({report['model']}, {'+'.join(report['methods'])}, "
            f"{clients} clients)\n\n{report['machine']['cpu']}, {report['machine']['cores']} cores; commit "
            f"{report['machine']['commit']}; {report['machine']['date']}; load average "
            f"{report['machine']['load_average_1_5_15_min_at_end'][0]} at the end (shared machine).\n\n"
            f"RSS MiB after each of 8 chunks of {args.steady // 8} requests (after a warm-up): "
            + ", ".join(f"{value:.1f}" for value in rss)
            + f"\n\nLost {sum(c['lost'] for c in chunks)}, wrong {sum(c['wrong'] for c in chunks)}, crossed "
              f"{sum(c['crossed'] for c in chunks)}, unexpected status {sum(c['unexpected_status'] for c in chunks)}.\n")
    save_report(RESULTS, result_stem("serve-steady-rss", args), report, text)


def parse_counts(text: str | None, model: str) -> dict:
    counts = dict(DEFAULT_REQUESTS[model])
    if text:
        scale = float(text)
        counts = {key: max(MALFORMED_EVERY, int(round(value * scale))) for key, value in counts.items()}
    return counts


def stop_server(server: subprocess.Popen) -> None:
    """Stop a server process started by a benchmark: SIGTERM, then SIGKILL after 30 s."""
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


def wait_ready(base: str, server: subprocess.Popen, log: Path, seconds: float = 180.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.3)


def measured_phase(args, base: str, pid: int, explainer, images: np.ndarray, bodies, references: np.ndarray,
                   name: str, clients: int, total: int, rss_samples: list) -> dict:
    """One phase of load, with the offline throughput measured around it: at --max-batch-size right before and
    right after (for the methods in --offline-max-batch), and at the batch size the server formed right after."""
    methods = METHOD_SETS[name]
    budget = args.offline_seconds * (1.0 if name == "gradcam" else 2.0)
    around_max = name in args.offline_max_batch
    before = offline_throughput(explainer, images, methods, args.max_batch_size, budget) if around_max else None
    row = asyncio.run(run_phase(base, pid, bodies, references, methods, clients, total, rss_samples))
    formed = max(1, min(args.max_batch_size, int(round(row["batches"]["mean"]))))
    row["offline_at_formed_batch"] = offline_throughput(explainer, images, methods, formed, budget)
    row["ratio_to_offline_at_formed_batch"] = (row["throughput_images_per_s"]
                                               / row["offline_at_formed_batch"]["images_per_s"])
    if around_max:
        after = offline_throughput(explainer, images, methods, args.max_batch_size, budget)
        rate = (before["images_per_s"] + after["images_per_s"]) / 2
        row["offline_at_max_batch"] = {"batch": args.max_batch_size, "images_per_s": rate, "before": before,
                                       "after": after}
        row["ratio_to_offline_at_max_batch"] = row["throughput_images_per_s"] / rate
    print(json.dumps({k: row.get(k) for k in ("methods", "clients", "requests", "throughput_images_per_s",
                                              "ratio_to_offline_at_formed_batch", "ratio_to_offline_at_max_batch",
                                              "p50_s", "p99_s", "lost", "wrong", "crossed", "unexpected_status",
                                              "server_cpu_ms_per_request", "client_cpu_ms_per_request",
                                              "load_average_1_min_start_end")} | {"mean_batch": row["batches"]["mean"]}),
          flush=True)
    return row


async def run_mixed_phase(base: str, pid: int, bodies: dict, references: dict, clients: int, total: int,
                          fusion_every: int) -> dict:
    """`clients` concurrent clients send `total` good requests, every `fusion_every`-th a Fusion-CAM request (0:
    none), the others Grad-CAM; every answer is checked against its image's map alone. Latency per method."""
    import aiohttp

    counters = {"good_ok": 0, "wrong": 0, "crossed": 0, "lost": 0, "unexpected_status": 0}
    latencies: dict[str, list[float]] = {"gradcam": [], "fusion": []}
    next_index = 0
    url = f"{base}/v2/models/m/infer"

    async def client(session) -> None:
        nonlocal next_index
        while next_index < total:
            k = next_index
            next_index += 1
            name = "fusion" if fusion_every and k % fusion_every == fusion_every - 1 else "gradcam"
            good_bodies, _ = bodies[name]
            image = k % len(good_bodies)
            body, headers = good_bodies[image]
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    status, answer, answer_headers = response.status, await response.read(), response.headers
            except (aiohttp.ClientError, asyncio.TimeoutError):
                counters["lost"] += 1
                continue
            if status != 200:
                counters["unexpected_status"] += 1
                continue
            latencies[name].append(time.perf_counter() - started)
            flat = references[name].reshape(len(references[name]), -1)
            got = binary_outputs(answer_headers, answer)[name].reshape(-1)
            if np.abs(got - flat[image]).max() <= TOLERANCE:
                counters["good_ok"] += 1
            elif (np.abs(flat - got).max(axis=1) <= TOLERANCE).any():
                counters["crossed"] += 1
            else:
                counters["wrong"] += 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=1200)) as session:
        load_start, server_cpu = os.getloadavg()[0], process_cpu_seconds(pid)
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        wall = time.perf_counter() - started
    row = {"clients": clients, "requests": total, "fusion_share": 1 / fusion_every if fusion_every else 0.0,
           **counters, "seconds": wall, "server_cpu_s": process_cpu_seconds(pid) - server_cpu,
           "load_average_1_min_start_end": [round(load_start, 1), round(os.getloadavg()[0], 1)]}
    for name, values in latencies.items():
        row[name] = {"answers": len(values),
                     "p50_s": float(np.percentile(values, 50)) if values else None,
                     "p99_s": float(np.percentile(values, 99)) if values else None}
    return row


def mixed_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# fusioncam serve: Grad-CAM beside Fusion-CAM ({report['model']}, {report['clients']} clients)", "",
        f"{m['cpu']}, {m['cores']} cores, Python {m['python']}; commit {m['commit']}; {m['date']}. Shared machine: "
        f"other jobs ran beside this one (the 1-minute load average at the start and end of each phase is in its row).",
        "", f"Server: `fusioncam serve --device cpu --max-batch-size {report['max_batch_size']} --max-latency-ms "
        f"{report['max_latency_ms']}` (lanes: one gradient worker, one sweep worker); v2 REST, base64 PNG in JSON, "
        f"maps back as binary tensors, every answer checked against the image's map alone (1e-5). Command: "
        f"`{report['command']}`.", "",
        "| server | phase | requests | Grad-CAM p50 s | Grad-CAM p99 s | Fusion-CAM p50 s | Fusion-CAM p99 s | "
        "lost / wrong / crossed / unexpected | load avg start, end |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]

    def cell(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    for row in report["phases"]:
        lines.append(f"| {row['server']} | {row['phase']} | {row['requests']} | {cell(row['gradcam']['p50_s'])} | "
                     f"{cell(row['gradcam']['p99_s'])} | {cell(row['fusion']['p50_s'])} | {cell(row['fusion']['p99_s'])} | "
                     f"{row['lost']} / {row['wrong']} / {row['crossed']} / {row['unexpected_status']} | "
                     f"{row['load_average_1_min_start_end'][0]}, {row['load_average_1_min_start_end'][1]} |")
    lines += ["", "Grad-CAM p99, mixed over Grad-CAM only: " + "; ".join(
        f"{server}: {ratio:.2f}x" for server, ratio in report["gradcam_p99_ratio"].items()) + " (target: at most 2x "
        "with lanes)."]
    return "\n".join(lines) + "\n"


def mixed_run(args, bundle, bodies: dict, references: dict) -> None:
    """The --mixed run: Grad-CAM only, then 90/10 mixed, against the server with lanes (and with one lane)."""
    servers = [("lanes", ())] + ([("one lane", ("--gradient-workers", "0"))] if args.compare_one_lane else [])
    phases, ratios = [], {}
    for label, extra in servers:
        http_port, grpc_port = free_port(), free_port()
        log = Path(tempfile.mkdtemp(prefix="serve-mixed-")) / "server.log"
        server = start_server(str(bundle.path), http_port, grpc_port, args, log, extra)
        base = f"http://127.0.0.1:{http_port}"
        try:
            wait_ready(base, server, log)
            asyncio.run(run_mixed_phase(base, server.pid, bodies, references, 2, 20, 2))  # warm-up, not counted
            rows = {}
            for phase, every in (("Grad-CAM only", 0), ("90% Grad-CAM, 10% Fusion-CAM", 10)):
                row = asyncio.run(run_mixed_phase(base, server.pid, bodies, references, args.clients[-1],
                                                  args.mixed, every))
                row.update(server=label, phase=phase)
                print(json.dumps(row), flush=True)
                rows[every] = row
                phases.append(row)
            ratios[label] = rows[10]["gradcam"]["p99_s"] / rows[0]["gradcam"]["p99_s"]
        finally:
            stop_server(server)
    report = {"model": model_label(args), "clients": args.clients[-1], "max_batch_size": args.max_batch_size,
              "max_latency_ms": args.max_latency_ms, "phases": phases, "gradcam_p99_ratio": ratios,
              "machine": machine_facts(), "command": "python -m benchmarks.serve_load " + " ".join(sys.argv[1:])}
    save_report(RESULTS, result_stem("serve-mixed", args), report, mixed_markdown(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(DEFAULT_REQUESTS), default="small")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--methods", nargs="+", choices=sorted(METHOD_SETS), default=["gradcam", "fusion"])
    parser.add_argument("--input", choices=INPUT_FORMS, default="png-base64", help="what a good request carries: "
                        + "; ".join(f"{k}: {v}" for k, v in INPUT_FORM_TEXT.items()))
    parser.add_argument("--scale", help="multiply every phase's request count (e.g. 0.25 for a quick run)")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-latency-ms", type=float, default=10.0)
    parser.add_argument("--pool", type=int, default=32, help="distinct images (each checked against its own map)")
    parser.add_argument("--offline-seconds", type=float, default=4.0, help="time per offline measurement (Grad-CAM; "
                        "twice this for Fusion-CAM; at least one Explainer.explain call)")
    parser.add_argument("--offline-max-batch", nargs="*", choices=sorted(METHOD_SETS), default=["gradcam"],
                        help="methods also measured offline at --max-batch-size before and after each phase")
    parser.add_argument("--server-lifetime", type=int, default=5400, help="the server stops by itself after this")
    parser.add_argument("--tag", help="added to the result file names (a run that must not replace the main one)")
    parser.add_argument("--steady", type=int, metavar="N", help="instead of the phases: after warm-up, N requests of "
                        "the first method set at the last client count, in 8 chunks, the server's RSS after each")
    parser.add_argument("--mixed", type=int, metavar="N", help="instead of the phases: N Grad-CAM requests, then N "
                        "requests 90%% Grad-CAM / 10%% Fusion-CAM, at the last --clients count (fairness of the lanes)")
    parser.add_argument("--compare-one-lane", action="store_true", help="with --mixed: also run the mixed phase "
                        "against a server with --gradient-workers 0 (one lane)")
    args = parser.parse_args()
    # the server sets FUSIONCAM_CPU_SPINNING=0 for itself; the offline Explainer here runs with the same setting
    os.environ.setdefault(CPU_SPINNING_ENV, "0")

    bundle = small_bundle() if args.model == "small" else default_bundle()
    manifest = bundle.manifest
    size = tuple(manifest.input_size)
    pool = image_pool(size[0], args.pool)
    images = model_inputs(pool, size, manifest)
    counts = parse_counts(args.scale, args.model)

    explainer = fusioncam.Explainer(bundle, device="cpu")
    references, bodies = {}, {}
    for name in args.methods:  # each image alone: what every answer must equal
        methods = METHOD_SETS[name]
        references[name] = np.concatenate([explainer.explain(images[i:i + 1], methods=methods).maps[methods[0]]
                                           for i in range(len(images))])
        bodies[name] = request_bodies(args.input, pool, images, methods, size)
    if args.mixed:
        explainer.close()
        mixed_run(args, bundle, bodies, references)
        return
    http_port, grpc_port = free_port(), free_port()
    log = Path(tempfile.mkdtemp(prefix="serve-load-")) / "server.log"
    server = start_server(str(bundle.path), http_port, grpc_port, args, log)
    base = f"http://127.0.0.1:{http_port}"
    rss_samples: list = []
    phases = []
    try:
        wait_ready(base, server, log)
        for name in args.methods:  # warm-up: a few requests of each method set, not counted
            asyncio.run(run_phase(base, server.pid, bodies[name], references[name], METHOD_SETS[name], 2,
                                  MALFORMED_EVERY, []))
        rss_after_warm_up = rss_mib(server.pid)
        if args.steady:
            steady_run(args, base, server.pid, bodies, references)
            return
        for name in args.methods:
            for clients in args.clients:
                phases.append(measured_phase(args, base, server.pid, explainer, images, bodies[name], references[name],
                                             name, clients, counts[(name, clients)], rss_samples))
        rss_end = rss_mib(server.pid)
    finally:
        stop_server(server)
        explainer.close()
    totals = {key: sum(row[key] for row in phases)
              for key in ("requests", "good_ok", "malformed_400", "lost", "wrong", "crossed", "unexpected_status")}
    report = {
        "model": model_label(args), "input_form": args.input,
        "input_size": list(size), "channels": manifest.channels, "target_layer": manifest.target_layer,
        "max_batch_size": args.max_batch_size, "max_latency_ms": args.max_latency_ms, "pool_images": len(pool),
        "offline_max_batch_methods": list(args.offline_max_batch),
        "ort_intra_op_threads": int(os.environ.get(CPU_THREADS_ENV, "0") or 0) or os.cpu_count(),
        "ort_allow_spinning": os.environ[CPU_SPINNING_ENV] != "0",
        "machine": machine_facts(), "phases": phases, "totals": totals,
        "rss_after_warm_up_mib": rss_after_warm_up, "rss_end_mib": rss_end,
        "rss_peak_mib": max((value for _, value in rss_samples), default=float("nan")),
        "rss_over_time_mib": rss_samples[:: max(1, len(rss_samples) // 400)],
        "command": "python -m benchmarks.serve_load " + " ".join(sys.argv[1:]),
    }
    save_report(RESULTS, result_stem("serve", args), report, markdown(report))


if __name__ == "__main__":
    main()
