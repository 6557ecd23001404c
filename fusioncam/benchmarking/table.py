"""The table `fusioncam bench` prints at the end (the JSON holds everything)."""

from __future__ import annotations


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def _mib(count: int | None) -> str:
    return "-" if count is None else f"{count / 2**20:.0f}"


def bench_table(report: dict) -> str:
    """Rows per precision, method and batch size: latency percentiles (ms), images/s, floor (ms), ratio to the floor,
    peak RSS (MiB); pytorch-grad-cam's rows beside them when compared; unavailable precisions with their reason."""
    machine = report["machine"]
    lines = [f"fusioncam bench: {report['source']} at '{report['layer']}' (K={report['channels']}), "
             f"{report.get('device', '?')}, {machine['cpu_model']} ({machine['cpu_cores']} cores), "
             f"onnxruntime {machine['onnxruntime']}, scorer batch {report.get('scorer_batch', '-')}",
             "",
             f"{'precision':<9} {'method':<20} {'N':>4} {'p50 ms':>10} {'p90 ms':>10} {'p99 ms':>10} "
             f"{'img/s':>8} {'floor ms':>10} {'x floor':>7} {'RSS MiB':>8}"]
    for row in report["results"]:
        lines.append(f"{row['precision']:<9} {row['method']:<20} {row['batch_size']:>4} {_ms(row['p50_s']):>10} "
                     f"{_ms(row['p90_s']):>10} {_ms(row['p99_s']):>10} {row['images_per_s']:>8.2f} "
                     f"{_ms(row['floor']['seconds']):>10} {row['ratio_to_floor']:>7.2f} {_mib(row['peak_rss_bytes']):>8}")
    compared = report.get("pytorch_grad_cam")
    if compared is not None:
        lines.append("")
        if "skipped" in compared:
            lines.append(f"pytorch-grad-cam: skipped ({compared['skipped']})")
        else:
            mine = {(r["method"], r["batch_size"]): r for r in report["results"] if r["precision"] == "fp32"}
            lines.append(f"pytorch-grad-cam {compared['version']} (same model, images and batch sizes):")
            for row in compared["results"]:
                ours = mine.get((row["method"], row["batch_size"]))
                versus = f"  fusioncam fp32 is {row['p50_s'] / ours['p50_s']:.2f}x faster" if ours else ""
                lines.append(f"{'torch':<9} {row['method']:<20} {row['batch_size']:>4} {_ms(row['p50_s']):>10} "
                             f"{_ms(row['p90_s']):>10} {_ms(row['p99_s']):>10} {row['images_per_s']:>8.2f}{versus}")
            if compared["not_in_pytorch_grad_cam"]:
                lines.append(f"not in pytorch-grad-cam: {', '.join(compared['not_in_pytorch_grad_cam'])}")
    for row in report["unavailable"]:
        lines.append(f"{row['precision']}: not measured ({row['reason']})")
    return "\n".join(lines) + "\n"
