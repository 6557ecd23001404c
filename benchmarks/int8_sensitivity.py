"""`python -m benchmarks.int8_sensitivity`: which blocks of EfficientNet-Lite0's INT8 scorer cause the logit error
that Score-CAM's softmax amplifies, and what keeping them float32 costs (mixed precision:
`Int8Settings(float_node_prefixes=...)`, ONNX Runtime's `nodes_to_exclude`).

The error that matters is Score-CAM's: the explained class's logit on the sweep's masked images, INT8 against
float32. Its spread over the channels of one image (the standard deviation of INT8 - float32; the softmax ignores a
shift common to all) is measured on every other masked image of the float32 sweep of three sample photos (chelsea,
motorcycle, astronaut: the two with the lowest map agreement and one more), first with every node quantized, then
with one block at a time kept float32 (the stem, each MBConv block, the head convolution, the classifier), then with
the most helpful blocks kept float32 together, each beside the float32 scorer's throughput on the same rows.
JSON and markdown land in benchmarks/results/int8-sensitivity-<cpu>.*.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx

import fusioncam
from fusioncam.export.int8_scorer import Int8Settings, calibration_images, int8_scorer
from fusioncam.images import IMAGENET_MEAN, IMAGENET_STD, preprocess, sample_images
from fusioncam.runtime.cpu_backend import cpu_session

from .models import build_model
from .report import RESULTS, cpu_label, machine_record, save_report

PHOTOS = ("chelsea", "motorcycle", "astronaut")


def sweep_rows(explainer, rgb: np.ndarray, every: int = 2) -> tuple[np.ndarray, int]:
    """(every `every`-th masked image of the float32 Score-CAM sweep of one photo, the explained class)."""
    backend = explainer.backend
    runs: list[np.ndarray] = []
    score_rows = backend.score_rows

    def recording(count, inputs=None):
        runs.append(backend.input_buffer()[:count].copy())
        return score_rows(count) if inputs is None else score_rows(count, inputs)

    backend.score_rows = recording
    try:
        x = preprocess(rgb, explainer.bundle.manifest.input_size, IMAGENET_MEAN, IMAGENET_STD)[None]
        explanation = explainer.explain(x, methods=("scorecam",))
    finally:
        backend.score_rows = score_rows
    channels = explainer.bundle.manifest.channels
    rows = np.concatenate(runs)[-int(explanation.forwards_run[0]):]  # the sweep's rows come last
    assert len(rows) <= channels
    return rows[::every].copy(), int(explanation.classes[0])


def target_logits(session, rows: np.ndarray, target: int, batch: int = 16) -> np.ndarray:
    """The scorer's logit of `target` for every row, `batch` rows a run."""
    return np.concatenate([session.run(None, {"input": rows[i : i + batch]})[0][:, target]
                           for i in range(0, len(rows), batch)])


def throughput(session, rows: np.ndarray, seconds: float, batch: int = 16) -> float:
    """Rows per second over full batches of `rows`, run for about `seconds`."""
    x = rows[:batch]
    session.run(None, {"input": x})
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, {"input": x})
        done += len(x)
    return done / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8_sensitivity", description=__doc__)
    parser.add_argument("--together", type=int, nargs="*", default=[1, 2, 4],
                        help="numbers of the most helpful blocks kept float32 together (default 1 2 4)")
    parser.add_argument("--seconds", type=float, default=2.0, help="throughput timing per scorer")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fusioncam-int8-sensitivity"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)

    model, layer, class_names = build_model("efficientnet_lite0")
    bundle = fusioncam.export_torch(model, layer, args.work / "efficientnet_lite0.fcam", class_names=class_names).bundle
    scorer = onnx.load(str(bundle.scorer_path))
    explainer = fusioncam.Explainer(bundle, device="cpu")
    photos = sample_images()
    rows = {name: sweep_rows(explainer, photos[name]) for name in PHOTOS}
    explainer.close()
    float_session = cpu_session(bundle.scorer_path)
    reference = {name: target_logits(float_session, x, target) for name, (x, target) in rows.items()}
    calibration, described = calibration_images(None, bundle.manifest.input_size, IMAGENET_MEAN, IMAGENET_STD)
    timing_rows = rows[PHOTOS[0]][0]

    def measure(label: str, prefixes: tuple[str, ...]) -> dict:
        started = time.perf_counter()
        path = args.work / "candidate.onnx"
        path.write_bytes(int8_scorer(scorer, calibration, described, "EfficientNet-Lite0",
                                     Int8Settings(float_node_prefixes=prefixes)))
        quantize_s = time.perf_counter() - started
        session = cpu_session(path)
        spread = {name: float(np.std(target_logits(session, x, target) - reference[name]))
                  for name, (x, target) in rows.items()}
        fp32, int8 = throughput(float_session, timing_rows, args.seconds), throughput(session, timing_rows, args.seconds)
        row = {"label": label, "float32_prefixes": list(prefixes), "error_spread": spread,
               "error_spread_mean": float(np.mean(list(spread.values()))), "quantize_s": quantize_s,
               "rows_per_s": {"fp32": fp32, "int8": int8}, "scorer_speedup": int8 / fp32}
        print(f"{label:28s} spread {row['error_spread_mean']:.3f} ({', '.join(f'{v:.3f}' for v in spread.values())}) "
              f"scorer {row['scorer_speedup']:.2f}x", flush=True)
        return row

    names = [node.name for node in scorer.graph.node]
    blocks = ["/model/_conv_stem/"] + [f"/model/_blocks.{i}/" for i in range(16)] + ["/model/_conv_head/",
                                                                                      "/model/_fc/"]
    blocks = [prefix for prefix in blocks if any(name.startswith(prefix) for name in names)]
    report: dict = {"model": "efficientnet_lite0", "layer": layer, "photos": list(PHOTOS),
                    "rows_per_photo": {name: len(x) for name, (x, _) in rows.items()}, "candidates": []}
    stem = "int8-sensitivity-" + cpu_label()

    def save() -> None:
        report["machine_record"] = machine_record()
        save_report(args.out, stem, report, markdown(report))

    report["candidates"].append(measure("every node INT8", ()))
    for prefix in blocks:
        report["candidates"].append(measure("one block", (prefix,)))
        save()
    base = report["candidates"][0]["error_spread_mean"]
    ranked = sorted(report["candidates"][1:], key=lambda row: row["error_spread_mean"])
    report["ranking"] = [(row["float32_prefixes"][0], base - row["error_spread_mean"]) for row in ranked]
    for count in args.together:
        prefixes = tuple(row["float32_prefixes"][0] for row in ranked[:count])
        report["candidates"].append(measure(f"{count} most helpful float32", prefixes))
        save()
    return 0


def markdown(report: dict) -> str:
    """Each candidate's logit error spread and scorer speed-up."""
    record = report["machine_record"]
    lines = [f"# INT8 scorer: logit error by block kept float32, EfficientNet-Lite0 `{report['layer']}`, CPU "
             f"({record['cpu_model']}, {record['cpu_cores']} cores), {record['recorded_at']}", "",
             "Error spread: the standard deviation over a photo's masked images (every other image of the float32 "
             "Score-CAM sweep) of the INT8 scorer's explained logit minus the float32 scorer's; scorer speed-up: "
             "rows per second against float32's on 16 masked rows, measured right after it.", "",
             f"| float32 part | spread mean | spread {', '.join(report['photos'])} | scorer speed-up |",
             "| --- | --- | --- | --- |"]
    for row in report["candidates"]:
        spread = ", ".join(f"{value:.3f}" for value in row["error_spread"].values())
        part = ", ".join(row["float32_prefixes"]) or "none"
        lines.append(f"| {row['label']}: {part} | {row['error_spread_mean']:.3f} | {spread} | "
                     f"{row['scorer_speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
