"""`python -m benchmarks.faster_rcnn_memory [--before REV]`: peak memory and time of a Faster R-CNN detection bundle
at torchvision's own proposal count (post_nms_top_n 1000 in eval mode), this tree against an earlier commit.

torchvision fasterrcnn_resnet50_fpn with seeded random weights (no download; the memory does not depend on them: the
graph's proposal slots are a static 1000 per image), exported at --size (default 320x320) with the automatic target
(backbone.body.layer4), then Grad-CAM of the 1 and 4 best slots of one image. Each configuration runs in its own
process (its own peak RSS: /proc sampled every 2 ms, native allocations included); the parent kills a child whose
resident memory passes --cap-gb (default 12: the machine is shared) and records that it did. `--before REV` also runs
the same measurement with fusioncam as it was at REV (`git archive REV fusioncam`, imported from a temporary
folder). Writes benchmarks/results/faster-rcnn-memory-<slots>-<cpu>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, tempfile, time
from pathlib import Path
import numpy as np, torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn
import fusioncam
from fusioncam import Explainer
from fusioncam.benchmarking.resident import peak_resident
from fusioncam.tasks.detection import InstanceSelection

size, slots = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
model.rpn._post_nms_top_n["testing"] = slots
row = {"fusioncam": str(Path(fusioncam.__file__).parent)}
with tempfile.TemporaryDirectory() as folder:
    with peak_resident() as memory:
        started = time.perf_counter()
        result = fusioncam.export_torch(model, None, Path(folder) / "frcnn", input_size=(size, size),
                                        task="detection")
        row["export_seconds"] = time.perf_counter() - started
    row["export_peak_bytes"] = memory["peak"]
    row["slots"] = int(result.bundle.manifest.output_size[0])
    image = np.random.default_rng(0).random((1, 3, size, size)).astype(np.float32)
    with Explainer(result, device="cpu") as explainer:
        explainer.explain(image, methods="gradcam", instances=InstanceSelection(min_score=0.0, max_instances=1))
        for count in (1, 4):
            with peak_resident() as memory:
                started = time.perf_counter()
                found = explainer.explain(image, methods="gradcam",
                                          instances=InstanceSelection(min_score=0.0, max_instances=count))
                row[f"gradcam_{count}_seconds"] = time.perf_counter() - started
            row[f"gradcam_{count}_peak_bytes"] = memory["peak"]
            row[f"gradcam_{count}_instances"] = len(found.classes)
print(json.dumps(row))
"""


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * 4096
    except (FileNotFoundError, ProcessLookupError):
        return 0


def run_capped(size: int, slots: int, cap_bytes: int, source: Path | None) -> dict:
    """One configuration in a child process, killed when its resident memory passes cap_bytes."""
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = f"{source}{os.pathsep}{env.get('PYTHONPATH', '')}"
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(size), str(slots)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=tempfile.gettempdir())
    peak, killed = 0, False
    while child.poll() is None:
        peak = max(peak, _rss(child.pid))
        if peak > cap_bytes:
            child.kill()
            killed = True
            break
        time.sleep(0.05)
    out, err = child.communicate()
    seconds = time.perf_counter() - started
    if killed:
        return {"error": f"resident memory passed the {cap_bytes / 2**30:.0f} GiB cap after {seconds:.0f} s "
                         f"(killed)", "peak_bytes_seen": peak}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if child.returncode != 0 or not lines:
        return {"error": (err.strip().splitlines() or [f"exit {child.returncode}"])[-1], "peak_bytes_seen": peak}
    return {**json.loads(lines[-1]), "peak_bytes_seen": peak}


def _commit(rev: str) -> str:
    root = Path(__file__).resolve().parent.parent
    return subprocess.run(["git", "rev-parse", rev], cwd=root, capture_output=True, text=True,
                          check=True).stdout.strip()


def main(argv: list[str] | None = None) -> dict:
    from .report import RESULTS, cpu_label, save_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--slots", type=int, default=1000, help="the RPN's post_nms_top_n in eval mode")
    parser.add_argument("--cap-gb", type=float, default=12.0)
    parser.add_argument("--before", help="a git revision whose fusioncam is measured too")
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parent.parent
    cap = int(args.cap_gb * 2**30)
    runs = {}
    with tempfile.TemporaryDirectory() as folder:
        if args.before:
            commit = _commit(args.before)
            archive = subprocess.run(["git", "archive", commit, "fusioncam"], cwd=root, capture_output=True,
                                     check=True).stdout
            subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
            runs[f"before ({commit[:7]})"] = run_capped(args.size, args.slots, cap, Path(folder))
        runs[f"this tree ({_commit('HEAD')[:7]}+)"] = run_capped(args.size, args.slots, cap, root)
    report = {"model": "torchvision fasterrcnn_resnet50_fpn (seeded random weights, 91 classes)",
              "input_size": [args.size, args.size], "post_nms_top_n": args.slots, "cap_bytes": cap, "runs": runs,
              "date": datetime.date.today().isoformat()}

    def gib(value) -> str:
        return f"{value / 2**30:.2f}" if isinstance(value, (int, float)) else "-"

    def sec(value) -> str:
        return f"{value:.1f}" if isinstance(value, (int, float)) else "-"

    lines = [f"# Faster R-CNN at {args.slots} proposal slots ({cpu_label()}), {report['date']}", "",
             f"{report['model']} at {args.size}x{args.size}, target backbone.body.layer4; each row its own process, "
             f"killed past {args.cap_gb:.0f} GiB resident", "",
             "| fusioncam | export s | export peak GiB | Grad-CAM 1 inst. s | peak GiB | Grad-CAM 4 inst. s | "
             "peak GiB | note |", "|---|---|---|---|---|---|---|---|"]
    for label, r in runs.items():
        lines.append(f"| {label} | {sec(r.get('export_seconds'))} | {gib(r.get('export_peak_bytes'))} | "
                     f"{sec(r.get('gradcam_1_seconds'))} | {gib(r.get('gradcam_1_peak_bytes'))} | "
                     f"{sec(r.get('gradcam_4_seconds'))} | {gib(r.get('gradcam_4_peak_bytes'))} | "
                     f"{r.get('error', '')} |")
    save_report(RESULTS, f"faster-rcnn-memory-{args.slots}-{cpu_label()}", report, "\n".join(lines) + "\n")
    return report


if __name__ == "__main__":
    main()
