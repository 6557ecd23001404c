"""The Fashion-MNIST faithfulness study: every classification method on the 10,000 real labelled test images.

    python -m benchmarks.faithfulness.fashion_mnist [--out fashion-mnist-study] [--images 10000] [--step 28]

Phases (each one's wall-clock recorded; a rerun with the same --out reuses what an earlier run finished):
1. train: a small CNN (fashion_mnist_model.py) on the 60,000 training images, on the CPU, with a fixed seed; its
   test accuracy on all 10,000 test images;
2. export: the fusioncam bundle (with the float16 scorer), and the first --images test images as a Parquet table
   of grey PNG bytes (`id`, `image`, `label`);
3. explain: `fusioncam explain-dataset` on a local Ray (--workers) with --evaluate (and --road) for every
   classification method, while the driver's memory and the machine's load average are sampled;
4. variants: on the first --variant-images images, Fusion-CAM in fast mode (max_channels = --fast-channels) and
   with the float16 scorer against exact fp32 (fashion_mnist_variants.py);
5. summary: per method each metric's mean with its 95% bootstrap interval, Fusion-CAM minus each method image by
   image (benchmarks/faithfulness/tables.py), the same split by correct / wrong prediction; JSON and markdown into
   benchmarks/results/, and the per-image metrics as a compact Parquet beside them.

Data: Debian's `dataset-fashion-mnist` (apt-get install dataset-fashion-mnist); without it the study exits with one
line saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.report import RESULTS, cpu_label, save_report

from .fashion_mnist_data import CLASS_NAMES, DEFAULT_ROOT, DataMissing, load_split, write_test_table

TEST_TABLE = "test-images.parquet"
BUNDLE = "bundle"
EXPLAINED = "explained"  # explain-dataset's output folder (with ROAD inside the run: explained-road)


def explained_folder(out: Path, args) -> Path:
    """explain-dataset's output folder for these settings: a run with ROAD inside has its own (its run.json
    differs), so both runs can share one study folder's model, bundle and test table."""
    return out / (f"{EXPLAINED}-road" if args.road else EXPLAINED)
STATE = "study.json"


def _methods() -> tuple[str, ...]:
    from fusioncam.runtime.methods import methods_for_task

    return tuple(methods_for_task("classification"))


class Phases:
    """Each phase's wall-clock seconds and facts, kept in OUT/study.json so that a rerun reuses finished phases."""

    def __init__(self, out: Path) -> None:
        self.path = out / STATE
        self.record = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def done(self, name: str) -> dict | None:
        return self.record.get(name)

    def finish(self, name: str, facts: dict) -> dict:
        from fusioncam.atomic import write_text_atomic

        self.record[name] = facts
        write_text_atomic(self.path, json.dumps(self.record, indent=2, default=float) + "\n")
        return facts


def train_phase(out: Path, phases: Phases, args) -> dict:
    """Train (or reuse OUT/model.pt) and measure the torch model's test accuracy on every test image."""
    import torch

    from . import fashion_mnist_model as fm

    test = load_split("t10k", args.data)
    weights = out / "model.pt"
    earlier = phases.done("train")
    settings = {"epochs": args.epochs, "seed": args.seed}
    if earlier and weights.is_file() and earlier.get("settings") == settings:
        model = fm.small_cnn()
        model.load_state_dict(torch.load(weights, weights_only=True))
        model.eval()
        norm = fm.Normalisation(**earlier["normalisation"])
        return {**earlier, "trained": fm.Trained(model, norm, args.epochs, earlier["seconds"], earlier["train_loss"])}
    train = load_split("train", args.data)
    start = time.perf_counter()
    trained = fm.train(train.images, train.labels, epochs=args.epochs, seed=args.seed, threads=os.cpu_count(),
                       log=lambda m: print(f"train: {m}", flush=True))
    accuracy = float((fm.predict(trained.model, trained.norm, test.images) == test.labels).mean())
    torch.save(trained.model.state_dict(), weights)
    facts = phases.finish("train", {"settings": settings, "seconds": time.perf_counter() - start,
                                    "train_loss": trained.train_loss, "test_accuracy": accuracy,
                                    "test_images": int(len(test.labels)),
                                    "normalisation": {"mean": trained.norm.mean, "std": trained.norm.std},
                                    "parameters": int(sum(p.numel() for p in trained.model.parameters()))})
    print(f"train: test accuracy {accuracy:.4f} on {len(test.labels)} images ({facts['seconds']:.0f} s)", flush=True)
    return {**facts, "trained": trained}


def export_phase(out: Path, phases: Phases, args, trained) -> dict:
    """The bundle and the test table (reused when an earlier run wrote them)."""
    from . import fashion_mnist_model as fm

    earlier = phases.done("export")
    if earlier and (out / BUNDLE / "manifest.json").is_file() and (out / TEST_TABLE).is_file() \
            and earlier.get("images") == args.images:
        return earlier
    start = time.perf_counter()
    if not (out / BUNDLE / "manifest.json").is_file():
        fm.export_bundle(trained, out / BUNDLE, CLASS_NAMES)
    bundle_seconds = time.perf_counter() - start
    write_test_table(load_split("t10k", args.data), out / TEST_TABLE, args.images)
    return phases.finish("export", {"seconds": time.perf_counter() - start, "bundle_seconds": bundle_seconds,
                                    "images": args.images, "target_layer": fm.TARGET_LAYER})


class Sampler:
    """Samples, every `period` seconds while a process runs: the machine's 1-minute load average, the process's
    RSS (the explain-dataset driver) and the RSS of the whole process tree (Ray's workers and daemons)."""

    def __init__(self, pid: int, period: float = 10.0) -> None:
        self.pid, self.period = pid, period
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.perf_counter()
        self._thread.start()

    def _run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.wait(self.period):
            try:
                tree = [root, *root.children(recursive=True)]
                rss = {}
                for p in tree:
                    try:
                        rss[p.pid] = p.memory_info().rss
                    except psutil.Error:
                        pass
                self.samples.append({"t": time.perf_counter() - self._start, "load1": os.getloadavg()[0],
                                     "driver_rss": rss.get(self.pid, 0), "tree_rss": sum(rss.values())})
            except psutil.Error:
                return

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        if not self.samples:
            return {"samples": 0}
        load = [s["load1"] for s in self.samples]
        return {"samples": len(self.samples), "period_s": self.period,
                "load_average_1min": {"mean": float(np.mean(load)), "min": float(min(load)), "max": float(max(load))},
                "driver_rss_peak_bytes": max(s["driver_rss"] for s in self.samples),
                "tree_rss_peak_bytes": max(s["tree_rss"] for s in self.samples),
                "trace": self.samples[:: max(1, len(self.samples) // 60)]}


def explain_command(out: Path, args) -> list[str]:
    command = [sys.executable, "-m", "fusioncam", "explain-dataset", str(out / TEST_TABLE), "--model",
               str(out / BUNDLE), "--out", str(explained_folder(out, args)), "--methods", ",".join(args.methods), "--evaluate",
               "--workers", str(args.workers), "--step", str(args.step), "--batch-images", str(args.batch_images),
               "--batch", str(args.scorer_batch), "--image-column", "image", "--id-column", "id", "--map-dtype",
               "float32"]
    if args.road:
        command += ["--road", "--road-percentiles", ",".join(map(str, args.road_percentiles))]
    return command


def explain_phase(out: Path, phases: Phases, args) -> dict:
    """Run explain-dataset (resuming an unfinished run) with its output in OUT/explain.log."""
    phase = "explain-road" if args.road else "explain"
    earlier = phases.done(phase)
    command = explain_command(out, args)
    if earlier and earlier.get("command") == command[1:] and earlier.get("returncode") == 0:
        return earlier
    start = time.perf_counter()
    with open(out / "explain.log", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        sampler = Sampler(process.pid, args.sample_seconds)
        code = process.wait()
    seconds = time.perf_counter() - start
    facts = {"command": command[1:], "returncode": code, "seconds": seconds, "monitor": sampler.stop()}
    if code != 0:
        tail = (out / "explain.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise SystemExit(f"fusioncam explain-dataset exited with {code} after {seconds:.0f} s; the log's end:\n"
                         + "\n".join(tail))
    summary = json.loads((explained_folder(out, args) / "summary.json").read_text())
    facts["dataset_run"] = summary.get("run")
    return phases.finish(phase, facts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("fashion-mnist-study"),
                        help="working folder: model, bundle, test table, explain-dataset output (not in git)")
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT, help=f"the IDX files' folder ({DEFAULT_ROOT})")
    parser.add_argument("--images", type=int, default=10000, help="test images to explain (the first N; 10000)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="all", help="comma-separated, or all (every classification method)")
    parser.add_argument("--step", type=int, default=28, help="pixels per deletion/insertion step (28x28 = 784)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-images", type=int, default=32, help="images per Ray block")
    parser.add_argument("--scorer-batch", type=int, default=256, help="masked images per scorer run")
    parser.add_argument("--road", action=argparse.BooleanOptionalAction, default=False,
                        help="ROAD inside explain-dataset on every image (default off: ROAD afterwards from the "
                             "stored maps, until --road-until)")
    parser.add_argument("--road-percentiles", default="10,20,30,40,50,60,70,80,90")
    parser.add_argument("--road-until", default=None, metavar="HH:MM",
                        help="without --road: compute ROAD from the stored maps, part by part, until this UTC time "
                             "(default: every image)")
    parser.add_argument("--variant-images", type=int, default=1000,
                        help="images for fast mode and fp16 against exact (0: skip)")
    parser.add_argument("--fast-channels", default="8,16", help="fast mode's max_channels, one or more (of K = 32)")
    parser.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples")
    parser.add_argument("--sample-seconds", type=float, default=10.0, help="load and memory sampling period")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON and markdown go")
    parser.add_argument("--stem", default=None, help="result file stem (default faithfulness-fashion-mnist-<machine>)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the study's own command, for the report
    args.methods = _methods() if args.methods == "all" else tuple(m.strip() for m in args.methods.split(",") if m)
    args.road_percentiles = tuple(int(p) for p in args.road_percentiles.split(","))
    args.fast_channels = tuple(int(k) for k in args.fast_channels.split(","))
    try:
        load_split("t10k", args.data)
    except DataMissing as exc:
        print(f"benchmarks.faithfulness.fashion_mnist: {exc}", file=sys.stderr)
        return 2
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    phases = Phases(out)
    started = time.perf_counter()
    load_at_start = os.getloadavg()
    trained = train_phase(out, phases, args)
    export = export_phase(out, phases, args, trained["trained"])
    print(f"export: {export['seconds']:.1f} s; explaining {args.images} images with {len(args.methods)} methods",
          flush=True)
    explain = explain_phase(out, phases, args)
    print(f"explain + evaluate: {explain['seconds']:.0f} s", flush=True)
    from .fashion_mnist_variants import variants_phase

    variants = variants_phase(out, phases, args) if args.variant_images > 0 else None
    road = None
    if not args.road:
        from .fashion_mnist_road import road_phase

        road = road_phase(out, phases, args)
    from .fashion_mnist_summary import summary_phase

    summary_phase(out, args, {"train": {k: v for k, v in trained.items() if k != "trained"}, "export": export,
                              "explain": explain, "variants": variants, "road": road,
                              "explain_without_road": phases.done("explain") if args.road else None},
                  {"load_average_at_start": load_at_start, "study_seconds_before_summary":
                   time.perf_counter() - started})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
