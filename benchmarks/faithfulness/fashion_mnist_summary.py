"""The Fashion-MNIST study's summary: per-image metrics read from explain-dataset's table (light columns only), the
tables (benchmarks/faithfulness/tables.py: mean [95% bootstrap interval], Fusion-CAM minus each method image by
image), the same split by correct / wrong prediction, the fast-mode and fp16 comparison, and the compact per-image
metrics Parquet beside the JSON and markdown in benchmarks/results/."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.report import cpu_label, save_report

from .tables import METRIC_COLUMNS, faithfulness_tables, paired_legend

ALL_METRICS = tuple(METRIC_COLUMNS)


def per_image_metrics(explained: Path, table_path: Path, methods: tuple[str, ...]):
    """(light table of explained rows joined with the labels, {method: {metric: float64 [N]}}) for the metrics the
    table holds (ROAD's where the run measured it)."""
    import pyarrow.parquet as pq

    from fusioncam.dataset import read_results
    from fusioncam.dataset.rows import metric_column

    names = pq.read_schema(next((explained / "parts").glob("part-*.parquet"))).names
    metrics = [m for m in ALL_METRICS if metric_column(methods[0], m) in names]
    columns = ["error", "class_index", "probability", *[metric_column(t, m) for t in methods for m in metrics]]
    table = read_results(explained, columns)
    table = table.filter(table.column("error").is_null())
    labels = pq.read_table(table_path, columns=["id", "label"])
    label_of = dict(zip(labels.column("id").to_pylist(), labels.column("label").to_pylist()))
    label = np.array([label_of[s] for s in table.column("source").to_pylist()], dtype=np.int64)
    per_method = {t: {m: table.column(metric_column(t, m)).to_numpy().astype(np.float64) for m in metrics}
                  for t in methods}
    return table, label, per_method


def compact_metrics(table, label: np.ndarray, path: Path, road=None) -> int:
    """The per-image metrics (float32) with id, label, predicted class and probability as a zstd Parquet; its size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"id": table.column("source"), "label": pa.array(label, pa.int16()),
               "class_index": pa.array(table.column("class_index").to_numpy().astype(np.int16)),
               "probability": pa.array(table.column("probability").to_numpy().astype(np.float32))}
    for name in table.schema.names:
        if name not in ("source", "error", "class_index", "probability"):
            columns[name] = pa.array(table.column(name).to_numpy().astype(np.float32))
    if road is not None:  # ROAD measured afterwards on a subset: NaN elsewhere
        from fusioncam.dataset.rows import method_tag

        values, rows = road
        for method, row in values.items():
            for metric, v in row.items():
                full = np.full(table.num_rows, np.nan, dtype=np.float32)
                full[rows] = v
                columns[f"{method_tag(method)}_{metric}"] = pa.array(full)
    pq.write_table(pa.table(columns), path, compression="zstd", compression_level=19)
    return path.stat().st_size


ROAD_METRICS = ("road_morf", "road_lerf", "road_combined")


def road_afterwards(out: Path, methods: tuple[str, ...], sources: list[str]):
    """(ROAD's {method: {metric: [n]}} on the images it reached, their row indices in `sources`), or None."""
    from fusioncam.dataset.rows import method_tag

    from .fashion_mnist_road import read_road

    road = read_road(out)
    if road is None or road.num_rows < 2:
        return None
    index = {s: i for i, s in enumerate(sources)}
    rows = np.array([index[s] for s in road.column("source").to_pylist()], dtype=np.int64)
    per_method = {t: {m: road.column(f"{method_tag(t)}_{m}").to_numpy().astype(np.float64) for m in ROAD_METRICS}
                  for t in methods}
    return per_method, rows


def _subset(per_method: dict, rows: np.ndarray) -> dict:
    return {t: {m: v[rows] for m, v in row.items()} for t, row in per_method.items()}


def _seconds(value) -> str:
    value = float(value)
    return f"{value / 60:.1f} min" if value >= 120 else f"{value:.1f} s"


def variants_markdown(variants: dict | None) -> list[str]:
    if not variants:
        return []
    lines = ["## Fast mode and the float16 scorer against exact fp32 (Fusion-CAM)", "",
             f"The first {variants['images']} test images, the exact explainer's predicted class; every map scored by "
             f"the exact fp32 explainer. Pearson r of each image's map with the exact map; each metric: the variant's "
             f"mean and the variant minus exact, image by image (95% paired-bootstrap interval; ✓: excludes 0).", "",
             "| variant | Pearson r mean | min | share > 0.99 | " +
             " | ".join(METRIC_COLUMNS[m].header for m in ("average_drop", "increase_in_confidence", "deletion_auc",
                                                             "insertion_auc")) + " |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, v in variants["variants"].items():
        title = "float16 scorer" if name == "fp16" else f"fast mode, max_channels = {name[len('fast'):]} of 32"
        cells = []
        for metric, row in v["metrics"].items():
            d = row["variant_minus_exact"]["difference"]
            decimals = METRIC_COLUMNS[metric].decimals
            mark = " ✓" if row["variant_minus_exact"]["separates"] else ""
            cells.append(f"{row['variant_mean']['mean']:.{decimals}f} ({d['mean']:+.{decimals}f} "
                         f"[{d['low']:+.{decimals}f}, {d['high']:+.{decimals}f}]{mark})")
        p = v["pearson"]
        lines.append(f"| {title} | {p['mean']:.4f} | {p['min']:.4f} | {p['share_above_0.99']:.1%} | "
                     + " | ".join(cells) + " |")
    return lines + [""]


def _without_road(explain: dict | None) -> str:
    """The sentence on the same run without ROAD, where the study folder holds one."""
    if not explain:
        return ""
    load = explain.get("monitor", {}).get("load_average_1min", {})
    return (f" The same explain-dataset run without ROAD (`--road` left out, otherwise the same command, into its own "
            f"folder) took {_seconds(explain['seconds'])} (load average mean {load.get('mean', float('nan')):.1f}; "
            f"driver peak RSS {explain.get('monitor', {}).get('driver_rss_peak_bytes', 0) / 2**20:.0f} MiB): ROAD's "
            f"host-side sparse solves are most of the time.")


def summary_phase(out: Path, args, phases: dict, extra: dict) -> dict:
    """Tables, JSON and markdown of the study into args.results (stem faithfulness-fashion-mnist-<machine>)."""
    from fusioncam.report.evaluation import method_title

    from .fashion_mnist import TEST_TABLE, explained_folder

    start = time.perf_counter()
    table, label, per_method = per_image_metrics(explained_folder(out, args), out / TEST_TABLE, args.methods)
    correct = table.column("class_index").to_numpy() == label
    tables = faithfulness_tables(per_method, resamples=args.resamples)
    split = {}
    for name, rows in (("correct", correct), ("wrong", ~correct)):
        if rows.sum() >= 2:
            t = faithfulness_tables(_subset(per_method, rows), resamples=args.resamples)
            split[name] = t
    stem = args.stem or f"faithfulness-fashion-mnist-{cpu_label()}"
    args.results.mkdir(parents=True, exist_ok=True)
    compact = out / f"{stem}-per-image.parquet"  # beside the maps: 6 MB at 10,000 images, kept out of the repository
    road = None if args.road else road_afterwards(out, args.methods, table.column("source").to_pylist())
    road_tables = faithfulness_tables(road[0], resamples=args.resamples) if road is not None else None
    compact_bytes = compact_metrics(table, label, compact, road)
    seconds = time.perf_counter() - start
    train, explain = phases["train"], phases["explain"]
    monitor = explain.get("monitor", {})
    dataset_run = explain.get("dataset_run") or {}
    report = {
        "study": "Fashion-MNIST faithfulness", "images": int(len(label)), "methods": list(args.methods),
        "step": args.step, "road_percentiles": list(args.road_percentiles) if args.road else None,
        "model": {"architecture": "conv16-pool-conv32-pool-conv32(target block3, 7x7)-linear10, batch norm, ReLU",
                  "parameters": train.get("parameters"), "epochs": train["settings"]["epochs"],
                  "seed": train["settings"]["seed"], "test_accuracy_torch": train["test_accuracy"],
                  "normalisation": train["normalisation"]},
        "bundle_predictions_correct": {"count": int(correct.sum()), "share": float(correct.mean())},
        "phases_seconds": {"train": train["seconds"], "export": phases["export"]["seconds"],
                           "explain_evaluate": explain["seconds"],
                           "variants": (phases["variants"] or {}).get("seconds"),
                           "road_afterwards": (phases.get("road") or {}).get("seconds_all_runs"), "summary": seconds},
        "study_command": "python -m benchmarks.faithfulness.fashion_mnist " + " ".join(getattr(args, "argv", [])),
        "explain_command": "python " + " ".join(explain["command"]), "dataset_run": dataset_run,
        "explain_without_road": phases.get("explain_without_road"),
        "monitor": monitor, "load_average_at_start": extra.get("load_average_at_start"),
        "tables": tables.record, "split": {k: v.record for k, v in split.items()},
        "road_afterwards": None if road is None else {**(phases.get("road") or {}), "tables": road_tables.record,
                                                     "correct": int(correct[road[1]].sum())},
        "variants": phases["variants"], "per_image_file": compact.name, "per_image_bytes": compact_bytes,
    }
    load = monitor.get("load_average_1min", {})
    lines = [f"# Faithfulness on Fashion-MNIST: {len(label)} real labelled test images, "
             f"{len(args.methods)} methods", "",
             f"Model: a small CNN ({report['model']['architecture']}; {train.get('parameters')} parameters) trained "
             f"on the 60,000 training images on the CPU, {train['settings']['epochs']} epochs, seed "
             f"{train['settings']['seed']}: test accuracy {train['test_accuracy']:.2%} on all 10,000 test images "
             f"(PyTorch); the exported bundle classifies {correct.sum()} of the {len(label)} explained images "
             f"correctly ({correct.mean():.2%}). Target layer `block3` (K = 32 channels, 7×7). Each image is "
             f"explained and measured for its predicted class. Deletion/insertion step {args.step} pixels "
             f"(of 784)" + (f"; ROAD at percentiles {', '.join(map(str, args.road_percentiles))}." if args.road
                            else "."), "",
             f"Study command: `{report['study_command']}`; its explain-dataset command: "
             f"`{report['explain_command']}`", "",
             f"Wall-clock: training {_seconds(train['seconds'])}, export {_seconds(phases['export']['seconds'])}, "
             f"explain + evaluate {_seconds(explain['seconds'])}"
             + (f", fast/fp16 comparison {_seconds(phases['variants']['seconds'])}" if phases["variants"] else "")
             + (f", ROAD afterwards {_seconds(phases['road']['seconds_all_runs'])}" if phases.get("road") else "")
             + f", summary {_seconds(seconds)}. Load average (1 min) during explain + evaluate: mean "
             f"{load.get('mean', float('nan')):.1f} (min {load.get('min', float('nan')):.1f}, max "
             f"{load.get('max', float('nan')):.1f}) on this shared {cpu_label()} machine; explain-dataset driver peak "
             f"RSS {monitor.get('driver_rss_peak_bytes', 0) / 2**20:.0f} MiB, its whole process tree (Ray) "
             f"{monitor.get('tree_rss_peak_bytes', 0) / 2**20:.0f} MiB." + _without_road(phases.get("explain_without_road")),
             "",
             f"## Every method, {len(label)} images", "",
             f"Each cell: the mean over the images [95% percentile-bootstrap interval, {args.resamples} resamples]; "
             f"bold: the best mean of the column.", "", tables.method_table, "",
             "## Fusion-CAM minus each method, image by image", "", paired_legend(), "", tables.paired_table, ""]
    if road is not None:
        r = road_tables.record["images"]
        lines += [f"## ROAD on the first {r} images", "",
                  f"ROAD (RemOve And Debias, noisy linear imputation, as pytorch-grad-cam 1.5.7 computes it) at "
                  f"percentiles {', '.join(map(str, args.road_percentiles))}, from the stored float32 maps, on the "
                  f"{r} images (ids in order; {int(correct[road[1]].sum())} classified correctly) that the time "
                  f"allowed after the run (its host-side sparse solves cost about 0.5 CPU-s per image for all "
                  f"methods). MoRF ↓, LeRF ↑, combined = (LeRF − MoRF)/2 ↑.", "", road_tables.method_table, "",
                  paired_legend(), "", road_tables.paired_table, ""]
    for name, t in split.items():
        n = int(correct.sum() if name == "correct" else (~correct).sum())
        lines += [f"## Images the model classifies {'correctly' if name == 'correct' else 'wrongly'} ({n})", "",
                  t.method_table, "", t.paired_table, ""]
    lines += variants_markdown(phases["variants"])
    lines += [f"Per-image metrics: `OUT/{compact.name}` ({compact_bytes / 2**20:.1f} MiB; written by the command into "
              f"its --out folder beside the maps, not kept in the repository).", ""]
    save_report(args.results, stem, report, "\n".join(lines))
    best = tables.record["best"]
    print("best means: " + "; ".join(f"{m}: {', '.join(method_title(x) for x in b)}" for m, b in best.items()),
          flush=True)
    return report
