"""Benchmark results name what produced them: every results JSON carries the machine, versions and commit."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import onnxruntime

import fusioncam

ROOT = Path(__file__).resolve().parents[2]


def benchmark_report_module():
    """benchmarks/report.py, loaded from its file (the benchmarks folder is not an installed package)."""
    spec = importlib.util.spec_from_file_location("benchmarks_report", ROOT / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_save_report_records_the_machine_versions_and_commit(tmp_path):
    report = benchmark_report_module()
    report.save_report(tmp_path, "run", {"seconds": 1.5}, "| table |\n")
    saved = json.loads((tmp_path / "run.json").read_text())
    record = saved["machine_record"]
    assert saved["seconds"] == 1.5 and (tmp_path / "run.md").read_text() == "| table |\n"
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    assert record["commit"] == (head or None)
    assert record["onnxruntime"] == onnxruntime.__version__
    assert record["onnxruntime_providers"] == onnxruntime.get_available_providers()
    assert record["fusioncam"] == fusioncam.__version__
    assert record["cpu_cores"] >= 1 and record["cpu_model"]
    assert isinstance(record["gpus"], list) and isinstance(record["tree_modified"], bool)
