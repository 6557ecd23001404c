"""`python -m benchmarks.export_speed`: export time, bundle size and peak memory for large torchvision classifiers.

Each export runs in its own process (seeded random weights, 224x224, CPU), so its peak RSS is its own. Writes
benchmarks/results/export-<device>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from .report import RESULTS, cpu_label, run_json_child, save_report

MODELS = (("resnet50", "layer4"), ("convnext_base", "features.7"), ("vgg16", "features.29"))

_CHILD = """
import json, resource, sys, tempfile, time
from pathlib import Path
import torch, torchvision
from fusioncam.export import export_torch
torch.manual_seed(0)
model = getattr(torchvision.models, sys.argv[1])().eval()
with tempfile.TemporaryDirectory() as folder:
    start = time.perf_counter()
    export_torch(model, sys.argv[2], Path(folder) / "bundle")
    seconds = time.perf_counter() - start
    files = {p.name: p.stat().st_size for p in (Path(folder) / "bundle").iterdir()}
parameters = sum(p.numel() for p in model.parameters())
print(json.dumps({"seconds": seconds, "files": files, "bundle_bytes": sum(files.values()),
                  "weight_bytes": 4 * parameters, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def markdown(report: dict) -> str:
    """The table people read; the JSON holds the rest."""
    lines = [f"# Export: time, bundle size, peak memory ({report['machine']}, {report['date']})", "",
             "| model | layer | seconds | bundle MiB | weights MiB (fp32) | peak RSS MiB |", "| --- | --- | --- | --- | --- | --- |"]
    for row in report["models"]:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['layer']} | failed: {row['error'][:100]} | | | |")
            continue
        lines.append(f"| {row['model']} | `{row['layer']}` | {row['seconds']:.2f} | {row['bundle_bytes'] / 2**20:.0f} | "
                     f"{row['weight_bytes'] / 2**20:.0f} | {row['peak_rss_bytes'] / 2**20:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Export each model once, write JSON + markdown, print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export_speed", description=__doc__)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = [{"model": model, "layer": layer, **run_json_child(_CHILD, model, layer)} for model, layer in MODELS]
    report = {"date": datetime.date.today().isoformat(), "machine": cpu_label(), "models": rows}
    save_report(args.out, f"export-{report['machine']}", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
