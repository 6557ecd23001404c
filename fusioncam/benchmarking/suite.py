"""`fusioncam bench`: per precision, method and batch size, the latency percentiles of Explainer.explain, images per
second, the stage breakdown, the forward-pass floor measured in the same run and the ratio to it, and peak memory;
optionally pytorch-grad-cam's same methods side by side. The project's benchmarks/run.py measures with the same code."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError
from ..runtime.explainer import PRECISIONS
from .floor import explain_pass_seconds, forward_floor, scorer_throughput
from .latency import latency_samples, latency_summary
from .machine import machine_record
from .resident import gpu_used_bytes, peak_resident

BENCH_PRECISIONS = PRECISIONS  # every precision the Explainer offers
COUNTS = ("scorer_forwards_run", "scorer_forwards_skipped", "method_forwards_run")  # in result.timings, not seconds


@dataclass
class BenchSettings:
    """What to measure: methods, images per call (batch sizes), precisions, fast mode's k, seconds per measurement."""

    methods: Sequence[str] = ("fusion",)
    batch_sizes: Sequence[int] = (1, 8, 32)
    precisions: Sequence[str] = ("fp32",)
    device: str = "auto"
    fast: int | None = None
    seconds: float = 5.0
    min_runs: int = 3
    scorer_batch: int | None = None  # masked images per scorer run (the Explainer's batch_size; None: its default)
    compare: Sequence[str] = field(default_factory=tuple)  # "pytorch-grad-cam"

    def check(self) -> None:
        """Clear errors for settings no measurement can use."""
        from ..runtime.methods import check_methods

        check_methods(list(self.methods))
        if not self.batch_sizes or any(int(n) < 1 for n in self.batch_sizes):
            raise InputError(f"batch sizes must be positive numbers of images per call; got {list(self.batch_sizes)}")
        unknown = [p for p in self.precisions if p not in BENCH_PRECISIONS]
        if unknown or not self.precisions:
            raise InputError(f"precision {', '.join(unknown) or '(none)'} is not one fusioncam bench measures; "
                             f"choose from {', '.join(BENCH_PRECISIONS)}")
        if not self.seconds > 0:
            raise InputError(f"seconds per measurement must be positive; got {self.seconds}")
        bad = [name for name in self.compare if name != "pytorch-grad-cam"]
        if bad:
            raise InputError(f"--compare {', '.join(bad)}: fusioncam bench compares with pytorch-grad-cam only")


def bench_images(manifest, n: int) -> np.ndarray:
    """n preprocessed images at the bundle's input size and normalisation: the five sample photos, repeated in turn."""
    from ..images import preprocess, sample_images

    photos = [preprocess(rgb, manifest.input_size, manifest.mean, manifest.std) for rgb in sample_images().values()]
    return np.stack([photos[i % len(photos)] for i in range(n)])


def _stage_means(timings: list[dict]) -> dict:
    """Mean seconds per stage over the timed runs (the counts, same every run, as the last run's)."""
    stages: dict[str, list[float]] = defaultdict(list)
    for timing in timings:
        for name, value in timing.items():
            if name not in COUNTS:
                stages[name].append(float(value))
    means = {name: statistics.fmean(values) for name, values in stages.items()}
    means.update({name: int(timings[-1].get(name, 0)) for name in COUNTS})
    return means


def measure_explainer(explainer, method: str, n: int, seconds: float, min_runs: int, images_per_s: float) -> dict:
    """One row: latency percentiles of explaining n images with `method`, images/s at the median, the mean stage
    times, the forward-pass floor (the explain pass alone on the same images, measured now, plus the scorer forwards
    the explanation ran at `images_per_s`) and the ratio of the median to it, peak RSS (and GPU memory in use)."""
    images = bench_images(explainer.bundle.manifest, n)
    timings: list[dict] = []

    def run() -> None:
        timings.append(explainer.explain(images, methods=(method,)).timings)

    with peak_resident(interval=0.005) as memory:
        samples = latency_samples(run, seconds, min_runs=min_runs)
    timed = timings[-len(samples):]
    summary = latency_summary(samples)
    stages = _stage_means(timed)
    stages["other"] = max(summary["mean_s"] - stages.get("total", 0.0), 0.0)  # host copies, result assembly
    forwards = stages["scorer_forwards_run"] + stages["method_forwards_run"]
    explain_s = explain_pass_seconds(explainer, images, seconds=min(seconds, 1.0))
    floor_s = forward_floor(explain_s, forwards, images_per_s)
    return {"method": method, "batch_size": n, **summary, "images_per_s": n / summary["p50_s"], "stages": stages,
            "floor": {"explain_pass_s": explain_s, "scorer_forwards": forwards, "scorer_images_per_s": images_per_s,
                      "seconds": floor_s},
            "ratio_to_floor": summary["p50_s"] / floor_s, "peak_rss_bytes": memory["peak"],
            "rss_rise_bytes": memory["rise"], "gpu_used_bytes": gpu_used_bytes() if explainer.device.kind == "cuda"
            else None}


def _explainer(bundle, settings: BenchSettings, precision: str):
    """The Explainer of one precision, or an InputError saying why this precision cannot run here."""
    from ..runtime import Explainer
    from ..runtime.device_select import select_device

    if precision == "tf32" and select_device(settings.device).kind != "cuda":
        raise InputError("tf32 applies to CUDA convolutions only; on the CPU it would measure fp32 again")
    explainer = Explainer(bundle, device=settings.device, batch_size=settings.scorer_batch, precision=precision,
                          max_channels=settings.fast)
    return explainer


def run_bench(bundle, settings: BenchSettings, progress: Callable[[str], None] | None = None,
              torch_model=None) -> dict:
    """Every measurement of `settings` on `bundle` (a bundle directory or a loaded Bundle), as one JSON-ready dict.

    A precision the bundle or device cannot run (no float16 or INT8 scorer, tf32 on the CPU) is a row with its
    reason, not a failure of the run. `progress(label)` is called before each measurement. `torch_model`
    ((module, target module)) enables the pytorch-grad-cam comparison."""
    from ..bundle import bundle_of, load_bundle, Bundle

    settings.check()
    bundle = bundle_of(bundle)
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    manifest = bundle.manifest
    report: dict = {"bundle": str(bundle.path), "source": manifest.source, "layer": manifest.target_layer,
                    "channels": manifest.channels, "input_size": list(manifest.input_size),
                    "settings": {"methods": list(settings.methods), "batch_sizes": [int(n) for n in settings.batch_sizes],
                                 "precisions": list(settings.precisions), "device": settings.device,
                                 "fast": settings.fast, "seconds": settings.seconds, "min_runs": settings.min_runs},
                    "results": [], "unavailable": []}
    say = progress or (lambda label: None)
    for precision in settings.precisions:
        try:
            explainer = _explainer(bundle, settings, precision)
        except InputError as exc:
            report["unavailable"].append({"precision": precision, "reason": str(exc)})
            continue
        with explainer:
            report["device"] = str(explainer.device)
            report["scorer_batch"] = explainer.batch_size
            say(f"{precision}: warm-up")
            explainer.warm_up()
            say(f"{precision}: scorer throughput")
            throughput = scorer_throughput(explainer, seconds=min(settings.seconds, 2.0))
            for method in settings.methods:
                for n in settings.batch_sizes:
                    say(f"{precision} {method} N={n}")
                    row = measure_explainer(explainer, method, int(n), settings.seconds, settings.min_runs, throughput)
                    report["results"].append({"precision": precision, **row})
    if "pytorch-grad-cam" in settings.compare:
        from .grad_cam_comparison import compare_pytorch_grad_cam

        report["pytorch_grad_cam"] = compare_pytorch_grad_cam(torch_model, manifest, settings, say)
    report["machine"] = machine_record()
    return report
