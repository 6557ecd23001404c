"""`python -m benchmarks.large_models`: export classifiers over protobuf's 2 GB limit (ONNX with external data, and
a PyTorch module), each in its own process; seconds, peak RSS and the bundle's files. Needs ~16 GiB of memory and
~5 GB of disk. Writes benchmarks/results/large-models-<machine>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from .report import RESULTS, cpu_label, run_json_child, save_report

CLASSES, FEATURES = 70_000, 8 * 32 * 32  # a head of 573 M float32 weights: 2.3 GB

_PRELUDE = f"""
import json, resource, shutil, tempfile, time
from pathlib import Path
import numpy as np
import fusioncam
CLASSES, FEATURES = {CLASSES}, {FEATURES}
folder = Path(tempfile.mkdtemp(dir="/tmp"))
def report(run):
    start = time.perf_counter()
    try:
        bundle = run().bundle
        row = {{"seconds": time.perf_counter() - start,
                "files": {{p.name: p.stat().st_size for p in bundle.path.iterdir()}}}}
    except Exception as exc:
        row = {{"error": f"{{type(exc).__name__}}: {{exc}}"[:300]}}
    row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    shutil.rmtree(folder)
    print(json.dumps(row))
"""

_ONNX = _PRELUDE + """
import onnx
from onnx import TensorProto, helper, numpy_helper
with open(folder / "big.data", "wb") as handle:  # written in slices: the graph itself never holds the weights
    rng = np.random.default_rng(0)
    for _ in range(FEATURES // 512):
        handle.write((rng.standard_normal((512, CLASSES), dtype=np.float32) * 0.01).tobytes())
head = TensorProto(name="fc_w", data_type=TensorProto.FLOAT, dims=[FEATURES, CLASSES], data_location=TensorProto.EXTERNAL)
for key, value in (("location", "big.data"), ("offset", "0"), ("length", str(FEATURES * CLASSES * 4))):
    entry = head.external_data.add()
    entry.key, entry.value = key, value
conv = numpy_helper.from_array(np.random.default_rng(1).standard_normal((8, 3, 3, 3)).astype(np.float32), "conv_w")
nodes = [helper.make_node("Conv", ["x", "conv_w"], ["conv"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["conv"], ["feat"]),
         helper.make_node("Flatten", ["feat"], ["flat"]), helper.make_node("MatMul", ["flat", "fc_w"], ["logits"])]
graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])], [conv, head])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
(folder / "big.onnx").write_bytes(model.SerializeToString())
report(lambda: fusioncam.export_onnx(folder / "big.onnx", folder / "bundle", target_layer="feat"))
"""

_TORCH = _PRELUDE + """
import torch
class Big(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Linear(FEATURES, CLASSES, bias=False)
    def forward(self, x):
        return self.head(self.features(x).flatten(1))
torch.manual_seed(0)
model = Big().eval()
report(lambda: fusioncam.export_torch(model, "features", folder / "bundle", input_size=(32, 32)))
"""


def markdown(report: dict) -> str:
    """The table people read."""
    lines = [f"# Exporting classifiers over 2 GB ({report['machine']}, {report['date']})", "",
             f"A 3x3 conv (8 channels, the target) and a linear head of {FEATURES} x {CLASSES} float32 weights "
             f"({FEATURES * CLASSES * 4 / 1e9:.2f} GB).", "",
             "| source | result | seconds | peak RSS GiB | bundle files (MB) |", "| --- | --- | --- | --- | --- |"]
    for name, row in report["exports"].items():
        files = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in sorted(row.get("files", {}).items()))
        result = "exported" if "error" not in row else f"failed: {row['error']}"
        seconds = f"{row['seconds']:.1f}" if "seconds" in row else ""
        peak = f"{row['peak_rss_bytes'] / 2**30:.1f}" if "peak_rss_bytes" in row else ""
        lines.append(f"| {name} | {result} | {seconds} | {peak} | {files} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Both exports, JSON + markdown."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.large_models", description=__doc__)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    exports = {"ONNX file, external data": run_json_child(_ONNX), "PyTorch module": run_json_child(_TORCH)}
    report = {"date": datetime.date.today().isoformat(), "machine": cpu_label(), "exports": exports}
    save_report(args.out, f"large-models-{report['machine']}", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
