"""`python -m benchmarks.serve_memory`: the memory-amplification case against `fusioncam serve` at its default
settings, with the server's peak RSS recorded.

Three concurrent v1 `:explain` requests, each 32 instances of one 6000x6600 PNG (about 130 KB: flat colour
blocks compress to almost nothing; about 5.7 MB per base64 JSON body, under --max-body-bytes, and 39.6
megapixels, under --max-image-pixels; the reported case used a 116 KB PNG of the same size). Decoded and kept whole, the 96 images are 96 x 119 MB = 11 GB; the server must
answer every request correctly (each map equal to Explainer.explain on the same image alone) or refuse it with
429/503, never with a 4xx that blames the image, while its RSS stays under --rss-budget-mib (2 GiB).
The server's VmRSS is sampled every 20 ms during the requests; VmHWM (the kernel's own peak) is read at the
end. Grad-CAM is asked for (the decoding is what is measured: every method decodes the same way). JSON and
markdown land in benchmarks/results/serve-memory-<machine>.{json,md}.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np

import fusioncam
from fusioncam.bundle_cache import default_bundle
from fusioncam.images import decode_rgb, preprocess, resized_rgb

from .report import RESULTS, cpu_label, cpu_model, save_report
from .serve_load import free_port, rss_mib, stop_server, wait_ready

WIDTH, HEIGHT = 6000, 6600


def case_png(width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> bytes:
    """A width x height RGB PNG of flat colour blocks, zlib level 9: about 130 KB at 6000x6600."""
    rgb = np.full((height, width, 3), 200, dtype=np.uint8)
    rng = np.random.default_rng(seed)
    for _ in range(40):
        y, x = int(rng.integers(0, height * 14 // 15)), int(rng.integers(0, width * 14 // 15))
        h, w = int(rng.integers(height // 30, height // 3)), int(rng.integers(width // 30, width // 3))
        rgb[y:y + h, x:x + w] = rng.integers(0, 256, size=3, dtype=np.uint8)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return encoded.tobytes()


def vm_field(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def post(url: str, body: bytes, timeout: float) -> tuple[int, dict, float, dict]:
    started = time.monotonic()
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), time.monotonic() - started, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}"), time.monotonic() - started, dict(error.headers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--instances", type=int, default=32)
    parser.add_argument("--rss-budget-mib", type=float, default=2048.0)
    parser.add_argument("--server-args", default="", help="extra `fusioncam serve` arguments (default: none, the defaults)")
    parser.add_argument("--tag", help="added to the result file names")
    args = parser.parse_args()

    bundle = default_bundle()
    size = tuple(bundle.manifest.input_size)
    encoded = case_png()
    with fusioncam.Explainer(bundle, device="cpu") as alone:  # the reference: the same bytes decoded as files are
        image = preprocess(resized_rgb(decode_rgb(encoded, "case"), size), size, bundle.manifest.mean, bundle.manifest.std)
        want = alone.explain(image[None], methods=("gradcam",)).maps["gradcam"][0]
    body = json.dumps({"instances": [{"data": base64.b64encode(encoded).decode()}] * args.instances,
                       "parameters": {"methods": ["gradcam"]}}).encode()

    http_port, grpc_port = free_port(), free_port()
    log = Path(tempfile.mkdtemp(prefix="serve-memory-")) / "server.log"
    command = [sys.executable, "-m", "fusioncam", "serve", str(bundle.path), "--name", "m", "--host", "127.0.0.1",
               "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--device", "cpu", "--stop-after", "3600",
               *args.server_args.split()]
    with open(log, "wb") as sink:
        server = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}"
    samples: list[tuple[float, float]] = []
    try:
        wait_ready(base, server, log)
        warm = post(f"{base}/v1/models/m:explain", json.dumps({"instances": [{"data": base64.b64encode(
            case_png(600, 660)).decode()}], "parameters": {"methods": ["gradcam"]}}).encode(), 120)
        assert warm[0] == 200, warm
        rss_before = rss_mib(server.pid)
        stop = threading.Event()

        def sample() -> None:
            start = time.monotonic()
            while not stop.is_set():
                samples.append((round(time.monotonic() - start, 3), rss_mib(server.pid)))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(args.requests) as pool:
            answers = list(pool.map(lambda _: post(f"{base}/v1/models/m:explain", body, 1200), range(args.requests)))
        wall = time.monotonic() - started
        stop.set()
        sampler.join()
        hwm = vm_field(server.pid, "VmHWM")
    finally:
        stop_server(server)
    rows = []
    for status, payload, seconds, headers in answers:
        row = {"status": status, "seconds": round(seconds, 2)}
        if status == 200:
            errors = [float(np.abs(np.asarray(e["maps"]["gradcam"], np.float32) - want).max())
                      for e in payload["explanations"]]
            row.update(instances=len(errors), max_abs_error=max(errors), correct=max(errors) <= 1e-5)
        else:
            row.update(error=payload.get("error"), retry_after=headers.get("retry-after") or headers.get("Retry-After"))
        rows.append(row)
    peak = max(value for _, value in samples)
    ok = all(r.get("correct") or r["status"] in (429, 503) for r in rows) and peak < args.rss_budget_mib
    report = {
        "case": {"requests": args.requests, "instances_per_request": args.instances, "png_bytes": len(encoded),
                 "width": WIDTH, "height": HEIGHT, "body_bytes": len(body), "methods": ["gradcam"],
                 "model": "efficientnet_lite0", "server_args": args.server_args or "(defaults)"},
        "answers": rows, "wall_s": round(wall, 1), "rss_before_mib": round(rss_before, 1),
        "rss_peak_sampled_mib": round(peak, 1), "vm_hwm_mib": round(hwm, 1), "rss_budget_mib": args.rss_budget_mib,
        "passed": ok, "rss_over_time_mib": samples[:: max(1, len(samples) // 300)],
        "cpu": cpu_model(), "command": "python -m benchmarks.serve_memory " + " ".join(sys.argv[1:]),
    }
    text = (f"# fusioncam serve: the memory-amplification case\n\n{args.requests} concurrent v1 :explain requests, each "
            f"{args.instances} instances of one {WIDTH}x{HEIGHT} PNG ({len(encoded):,} bytes; body {len(body):,} bytes), "
            f"Grad-CAM, EfficientNet-Lite0, server at {report['case']['server_args']}.\n\n"
            f"| request | status | seconds | result |\n| ---: | ---: | ---: | --- |\n"
            + "".join(f"| {i} | {r['status']} | {r['seconds']} | "
                      + (f"{r['instances']} maps, max abs error {r['max_abs_error']:.1e}" if r["status"] == 200
                         else f"{r.get('error')} (Retry-After {r.get('retry_after')})") + " |\n"
                      for i, r in enumerate(rows))
            + f"\nServer RSS: {rss_before:.0f} MiB before, peak {peak:.0f} MiB sampled every 20 ms (VmHWM "
              f"{hwm:.0f} MiB, start-up included), budget {args.rss_budget_mib:.0f} MiB: "
              f"{'PASS' if ok else 'FAIL'}. Wall time {wall:.1f} s.\n")
    tag = f"-{args.tag}" if args.tag else ""
    save_report(RESULTS, f"serve-memory{tag}-{cpu_label()}", report, text)
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
