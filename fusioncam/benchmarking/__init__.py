"""Latency measurement of explanations: `fusioncam bench` and the project's benchmarks/ share it."""

from .suite import BENCH_PRECISIONS, BenchSettings, run_bench

__all__ = ["BENCH_PRECISIONS", "BenchSettings", "run_bench"]
