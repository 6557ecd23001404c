"""`python -m benchmarks.serve_load`: `fusioncam serve` under load, against offline Explainer.explain, in one run.

A bounded asyncio load generator (httpx, 127.0.0.1 only) drives a real `fusioncam serve` subprocess with 1, 4, 16
and 64 concurrent clients, each sending single images over Open Inference Protocol v2 REST (base64 image in JSON,
the map back as a binary tensor), Grad-CAM only and Fusion-CAM, every tenth request malformed (a corrupt image, a
tensor of the wrong shape, an unknown output), which must be answered 400. Every good answer is checked against
the map Explainer.explain gives for the same image alone (1e-5): a map equal to another pool image's map counts as
crossed, any other mismatch as wrong; a request without an answer is lost. Reported per phase: throughput (good
answers per second), p50/p99 latency, the batch sizes the server formed (its Prometheus histogram), the server's
RSS over time, and the offline Explainer.explain throughput at the same batch size measured in the same run while
the server is idle. JSON and markdown land in benchmarks/results/serve-<model>-<machine>.{json,md}.
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

from .report import RESULTS, cpu_label, save_report

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
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or platform.machine())
    versions = {name: importlib.metadata.version(name)
                for name in ("fusioncam", "onnxruntime", "numpy", "kserve", "httpx")}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent, check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "fusioncam", "benchmarks/serve_load.py"],
                           capture_output=True, text=True, cwd=Path(__file__).parent, check=False).stdout.strip()
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "versions": versions,
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


def offline_throughput(explainer, images: np.ndarray, methods: tuple[str, ...], batch: int, budget_s: float) -> float:
    """Images per second of Explainer.explain on batches of `batch` pool images (warm: the server's phase just ran
    the same shapes in another process; at least one call, more while within the budget)."""
    done, calls, start = 0, 0, time.perf_counter()
    while calls < 1 or time.perf_counter() - start < budget_s:
        rows = [(calls * batch + j) % len(images) for j in range(batch)]
        explainer.explain(images[rows], methods=methods)
        done += batch
        calls += 1
    return done / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(bundle_path: str, http_port: int, grpc_port: int, args, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "fusioncam", "serve", bundle_path, "--name", "m", "--host", "127.0.0.1",
               "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--device", "cpu",
               "--max-batch-size", str(args.max_batch_size), "--max-latency-ms", str(args.max_latency_ms),
               "--max-queue", "512", "--max-instances", "4", "--stop-after", str(args.server_lifetime)]
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
            if sample.labels.get("model") != "m":
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


def request_body(kind: str, encoded: bytes, methods: tuple[str, ...], size: tuple[int, int]) -> dict:
    """A v2 JSON request: one base64 image (or a malformed one), the maps and the class back as binary tensors."""
    outputs = [{"name": name, "parameters": {"binary_data": True}} for name in (*methods, "explained_class")]
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
    return {"inputs": inputs, "outputs": outputs}


MALFORMED_KINDS = ("corrupt image", "wrong shape", "unknown output")


def binary_outputs(response) -> dict[str, np.ndarray]:
    """The outputs of a v2 binary-tensor response (JSON header, then each tensor's raw bytes in order)."""
    header_length = int(response.headers["inference-header-content-length"])
    body = response.content
    header = json.loads(body[:header_length])
    arrays, offset = {}, header_length
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        dtype = {"FP32": np.float32, "INT64": np.int64}[output["datatype"]]
        arrays[output["name"]] = np.frombuffer(body[offset:offset + size], dtype=dtype).reshape(output["shape"])
        offset += size
    return arrays


async def run_phase(base: str, pid: int, pool: list[bytes], references: np.ndarray, methods: tuple[str, ...],
                    clients: int, total: int, size: tuple[int, int], rss_samples: list) -> dict:
    """`clients` concurrent clients send `total` requests (every tenth malformed); every answer is checked."""
    import httpx

    counters = {"good_ok": 0, "malformed_400": 0, "wrong": 0, "crossed": 0, "lost": 0, "unexpected_status": 0}
    latencies: list[float] = []
    next_index = 0
    method = methods[0]
    flat_refs = references.reshape(len(references), -1)

    async def client(session) -> None:
        nonlocal next_index
        while next_index < total:
            k = next_index
            next_index += 1
            malformed = k % MALFORMED_EVERY == MALFORMED_EVERY - 1
            image = k % len(pool)
            kind = MALFORMED_KINDS[(k // MALFORMED_EVERY) % len(MALFORMED_KINDS)] if malformed else "good"
            body = request_body(kind, pool[image], methods, size)
            started = time.perf_counter()
            try:
                response = await session.post(f"{base}/v2/models/m/infer", json=body)
            except httpx.HTTPError:
                counters["lost"] += 1
                continue
            elapsed = time.perf_counter() - started
            if malformed:
                counters["malformed_400" if response.status_code == 400 else "unexpected_status"] += 1
                continue
            if response.status_code != 200:
                counters["unexpected_status"] += 1
                continue
            latencies.append(elapsed)
            got = binary_outputs(response)[method].reshape(-1)
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

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as session:
        before = batch_histogram((await session.get(f"{base}/metrics")).text)
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(stop))
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        wall = time.perf_counter() - started
        stop.set()
        await sampler
        after = batch_histogram((await session.get(f"{base}/metrics")).text)
    good = counters["good_ok"] + counters["wrong"] + counters["crossed"]
    return {
        "methods": list(methods), "clients": clients, "requests": total, "malformed": total // MALFORMED_EVERY,
        **counters, "seconds": wall, "throughput_images_per_s": good / wall,
        "p50_s": float(np.percentile(latencies, 50)) if latencies else None,
        "p99_s": float(np.percentile(latencies, 99)) if latencies else None,
        "batches": batch_sizes_between(before, after), "rss_mib_end": rss_mib(pid),
    }


# ------------------------------------------------------------------------------------------------- the run


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# fusioncam serve under load: {report['model']} ({report['input_size'][0]}x{report['input_size'][1]}, "
        f"K = {report['channels']}), CPU",
        "",
        f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f"; commit {m['commit']}; {m['date']}. "
        f"Load average {m.get('load_average_1_5_15_min_at_end', ['?'])[0]} on {m['cores']} cores at the end of the "
        f"run.",
        "",
        f"Server: `fusioncam serve --max-batch-size {report['max_batch_size']} --max-latency-ms {report['max_latency_ms']}`, "
        f"one inference worker; clients: httpx asyncio on the same machine (127.0.0.1), v2 REST, single images, "
        f"every 10th request malformed (answered 400). Offline: Explainer.explain in the benchmark process right after "
        f"each phase (the server idle), at the mean batch size the server formed in that phase (rounded).",
        "",
        "| methods | clients | requests (malformed) | good answers / s | offline at batch b / s | ratio | p50 s | p99 s "
        "| mean batch | lost / wrong / crossed / unexpected | server RSS MiB (end) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for row in report["phases"]:
        lines.append(
            f"| {'+'.join(row['methods'])} | {row['clients']} | {row['requests']} ({row['malformed']}) | "
            f"{row['throughput_images_per_s']:.2f} | {row['offline_images_per_s']:.2f} (b = {row['offline_batch']}) | "
            f"{row['ratio_to_offline']:.2f}x | {row['p50_s']:.3f} | {row['p99_s']:.3f} | {row['batches']['mean']:.1f} | "
            f"{row['lost']} / {row['wrong']} / {row['crossed']} / {row['unexpected_status']} | {row['rss_mib_end']:.0f} |")
    totals = report["totals"]
    lines += ["", f"Totals: {totals['requests']} requests, {totals['good_ok']} correct maps, {totals['malformed_400']} "
              f"malformed answered 400; lost {totals['lost']}, wrong {totals['wrong']}, crossed {totals['crossed']}, "
              f"unexpected status {totals['unexpected_status']}. Server RSS after warm-up "
              f"{report['rss_after_warm_up_mib']:.0f} MiB, at the end {report['rss_end_mib']:.0f} MiB, "
              f"peak {report['rss_peak_mib']:.0f} MiB."]
    return "\n".join(lines) + "\n"


def steady_run(args, base: str, pid: int, pool: list[bytes], references: dict, size: tuple[int, int], manifest) -> None:
    """Is the server's memory flat at a steady load? The same request mix in 8 chunks; RSS after each one."""
    name, clients = args.methods[0], args.clients[-1]
    chunks = []
    for _ in range(8):
        row = asyncio.run(run_phase(base, pid, pool, references[name], METHOD_SETS[name], clients, args.steady // 8,
                                    size, []))
        chunks.append({key: row[key] for key in ("requests", "good_ok", "malformed_400", "lost", "wrong", "crossed",
                                                 "unexpected_status", "throughput_images_per_s", "rss_mib_end")})
        print(json.dumps(chunks[-1]), flush=True)
    report = {"model": "seeded random 3-conv CNN" if args.model == "small" else args.model, "methods": list(METHOD_SETS[name]),
              "clients": clients, "chunks": chunks, "machine": machine_facts(),
              "command": "python -m benchmarks.serve_load " + " ".join(sys.argv[1:])}
    rss = [chunk["rss_mib_end"] for chunk in chunks]
    text = (f"# fusioncam serve: server RSS at a steady load ({report['model']}, {'+'.join(report['methods'])}, "
            f"{clients} clients)\n\n{report['machine']['cpu']}, {report['machine']['cores']} cores; commit "
            f"{report['machine']['commit']}; {report['machine']['date']}; load average {report['machine']['load_average_1_5_15_min_at_end'][0]} at the end.\n\n"
            f"RSS MiB after each of 8 chunks of {args.steady // 8} requests (after a warm-up): "
            + ", ".join(f"{value:.1f}" for value in rss)
            + f"\n\nLost {sum(c['lost'] for c in chunks)}, wrong {sum(c['wrong'] for c in chunks)}, crossed "
              f"{sum(c['crossed'] for c in chunks)}, unexpected status {sum(c['unexpected_status'] for c in chunks)}.\n")
    model = "small-cnn" if args.model == "small" else args.model
    save_report(RESULTS, f"serve-steady-rss-{model}-{cpu_label()}", report, text)


def parse_counts(text: str | None, model: str) -> dict:
    counts = dict(DEFAULT_REQUESTS[model])
    if text:
        scale = float(text)
        counts = {key: max(MALFORMED_EVERY, int(round(value * scale))) for key, value in counts.items()}
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(DEFAULT_REQUESTS), default="small")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--methods", nargs="+", choices=sorted(METHOD_SETS), default=["gradcam", "fusion"])
    parser.add_argument("--scale", help="multiply every phase's request count (e.g. 0.25 for a quick run)")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-latency-ms", type=float, default=10.0)
    parser.add_argument("--pool", type=int, default=32, help="distinct images (each checked against its own map)")
    parser.add_argument("--server-lifetime", type=int, default=3600, help="the server stops by itself after this")
    parser.add_argument("--steady", type=int, metavar="N", help="instead of the phases: after warm-up, N requests of "
                        "the first method set at the last client count, in 8 chunks, the server's RSS after each")
    args = parser.parse_args()

    bundle = small_bundle() if args.model == "small" else default_bundle()
    manifest = bundle.manifest
    size = tuple(manifest.input_size)
    pool = image_pool(size[0], args.pool)
    images = model_inputs(pool, size, manifest)
    counts = parse_counts(args.scale, args.model)

    explainer = fusioncam.Explainer(bundle, device="cpu")
    references = {}
    for name in args.methods:  # each image alone: what every answer must equal
        methods = METHOD_SETS[name]
        references[name] = np.concatenate([explainer.explain(images[i:i + 1], methods=methods).maps[methods[0]]
                                           for i in range(len(images))])
    http_port, grpc_port = free_port(), free_port()
    log = Path(tempfile.mkdtemp(prefix="serve-load-")) / "server.log"
    server = start_server(str(bundle.path), http_port, grpc_port, args, log)
    base = f"http://127.0.0.1:{http_port}"
    rss_samples: list = []
    phases = []
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.3)
        # warm-up: a few requests of each method set, not counted
        for name in args.methods:
            asyncio.run(run_phase(base, server.pid, pool, references[name], METHOD_SETS[name], 2, MALFORMED_EVERY,
                                  size, []))
        rss_after_warm_up = rss_mib(server.pid)
        if args.steady:
            steady_run(args, base, server.pid, pool, references, size, manifest)
            return
        for name in args.methods:
            for clients in args.clients:
                total = counts[(name, clients)]
                row = asyncio.run(run_phase(base, server.pid, pool, references[name], METHOD_SETS[name], clients, total,
                                            size, rss_samples))
                # offline right after the phase, the server idle: the same minutes of this shared machine's load
                batch = max(1, min(args.max_batch_size, int(round(row["batches"]["mean"]))))
                row["offline_batch"] = batch
                row["offline_images_per_s"] = offline_throughput(explainer, images, METHOD_SETS[name], batch,
                                                                 5.0 if name == "gradcam" else 10.0)
                row["ratio_to_offline"] = row["throughput_images_per_s"] / row["offline_images_per_s"]
                print(json.dumps({k: row[k] for k in ("methods", "clients", "requests", "throughput_images_per_s",
                                                      "offline_images_per_s", "p50_s", "p99_s", "lost", "wrong",
                                                      "crossed", "unexpected_status")}), flush=True)
                phases.append(row)
        rss_end = rss_mib(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    explainer.close()
    totals = {key: sum(row[key] for row in phases)
              for key in ("requests", "good_ok", "malformed_400", "lost", "wrong", "crossed", "unexpected_status")}
    report = {
        "model": args.model if args.model != "small" else "seeded random 3-conv CNN",
        "input_size": list(size), "channels": manifest.channels, "target_layer": manifest.target_layer,
        "max_batch_size": args.max_batch_size, "max_latency_ms": args.max_latency_ms, "pool_images": len(pool),
        "machine": machine_facts(), "phases": phases, "totals": totals,
        "rss_after_warm_up_mib": rss_after_warm_up, "rss_end_mib": rss_end,
        "rss_peak_mib": max((value for _, value in rss_samples), default=float("nan")),
        "rss_over_time_mib": rss_samples[:: max(1, len(rss_samples) // 400)],
        "command": "python -m benchmarks.serve_load " + " ".join(sys.argv[1:]),
    }
    stem = f"serve-{'small-cnn' if args.model == 'small' else args.model}-{cpu_label()}"
    save_report(RESULTS, stem, report, markdown(report))


if __name__ == "__main__":
    main()
