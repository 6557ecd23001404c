"""`python -m benchmarks.run` at two commits in one run, rounds alternating, so a refactoring's speed is judged
against the machine's own noise (the spread between rounds of the same commit), not against an old results file.

    python -m benchmarks.compare_commits 80cc1ce HEAD --rounds 2 -- --device cpu --skip-competitors

Each commit is checked out into a temporary git worktree (removed afterwards) and benchmarked from there with its
own code and its own bundle folder; nothing in this checkout changes. Writes
`benchmarks/results/compare-<base>-<head>-<machine>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .report import RESULTS, cpu_label, save_report

REPOSITORY = Path(__file__).resolve().parents[1]
# (label, path into benchmarks.run's JSON, unit): what a refactoring of the runtime could move.
MEASURES = [
    ("Fusion-CAM N=1, s", ("fusioncam_n1", "seconds")),
    ("Fusion-CAM N=1 without skipping, s", ("fusioncam_n1_no_skip", "seconds")),
    ("explain pass, s", ("fusioncam_n1", "stages", "explain_pass")),
    ("mask generation, s", ("fusioncam_n1", "stages", "mask_generation")),
    ("scorer forwards, s", ("fusioncam_n1", "stages", "scorer_forwards")),
    ("scorer alone, images/s", ("scorer_images_per_s",)),
    ("fast k=64, s", ("fusioncam_variants", "fast k=64", "seconds")),
    ("throughput N=8, images/s", ("throughput", "8", "images_per_s")),
]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPOSITORY, check=True, capture_output=True, text=True).stdout.strip()


def _value(report: dict, path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(report, dict) or key not in report:
            return None
        report = report[key]
    return float(report)


def run_once(worktree: Path, out: Path, work: Path, run_args: list[str]) -> dict:
    """benchmarks.run from `worktree` (its own fusioncam first on the path); its JSON."""
    env = {**os.environ, "PYTHONPATH": str(worktree)}
    command = [sys.executable, "-m", "benchmarks.run", *run_args, "--out", str(out), "--work", str(work)]
    subprocess.run(command, cwd=worktree, env=env, check=True, stdout=subprocess.DEVNULL)
    (found,) = [p for p in out.glob("*.json")]
    return json.loads(found.read_text())


def compare(base: str, head: str, rounds: int, run_args: list[str]) -> dict:
    """Alternate base and head `rounds` times each; per measure the median of each and head/base."""
    commits = {"base": _git("rev-parse", "--short", base), "head": _git("rev-parse", "--short", head)}
    runs: dict[str, list[dict]] = {"base": [], "head": []}
    with tempfile.TemporaryDirectory(prefix="fusioncam-compare-") as scratch:
        root = Path(scratch)
        trees = {}
        for side, commit in commits.items():
            trees[side] = root / side
            _git("worktree", "add", "--detach", str(trees[side]), commit)
        try:
            for index in range(rounds):
                for side in ("base", "head") if index % 2 == 0 else ("head", "base"):
                    print(f"round {index + 1}/{rounds}: {side} {commits[side]}", file=sys.stderr, flush=True)
                    runs[side].append(run_once(trees[side], root / f"out-{side}-{index}", root / f"work-{side}",
                                               run_args))
        finally:
            for tree in trees.values():
                _git("worktree", "remove", "--force", str(tree))
    rows = {}
    for label, path in MEASURES:
        values = {side: [v for v in (_value(r, path) for r in runs[side]) if v is not None] for side in runs}
        if not values["base"] or not values["head"]:
            continue
        medians = {side: statistics.median(v) for side, v in values.items()}
        spread = max((max(v) - min(v)) / statistics.median(v) for v in values.values())
        rows[label] = {"base": values["base"], "head": values["head"], "base_median": medians["base"],
                       "head_median": medians["head"], "head_over_base": medians["head"] / medians["base"],
                       "largest_spread_within_a_commit": spread}
    load = os.getloadavg()
    return {"commits": commits, "rounds": rounds, "benchmark_args": run_args, "rows": rows,
            "load_average_at_end": [round(v, 2) for v in load]}


def markdown(report: dict) -> str:
    commits = report["commits"]
    lines = [f"# benchmarks.run at {commits['base']} (base) and {commits['head']} (head), {report['rounds']} "
             f"alternating rounds each", "",
             f"Arguments: `{' '.join(report['benchmark_args'])}`; load average at the end: "
             f"{report['load_average_at_end']}. Noise: the largest spread between rounds of one commit.", "",
             "| measure | base (median) | head (median) | head / base | noise |", "| --- | ---: | ---: | ---: | ---: |"]
    for label, row in report["rows"].items():
        lines.append(f"| {label} | {row['base_median']:.4g} | {row['head_median']:.4g} | {row['head_over_base']:.3f} "
                     f"| {row['largest_spread_within_a_commit']:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare_commits", description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("head", nargs="?", default="HEAD")
    parser.add_argument("--rounds", type=int, default=2)
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)  # after --: arguments for benchmarks.run
    args = parser.parse_args(argv[:split])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped comparison still removes its worktrees
    run_args = argv[split + 1 :] or ["--device", "cpu", "--skip-competitors"]
    report = compare(args.base, args.head, args.rounds, run_args)
    stem = f"compare-{report['commits']['base']}-{report['commits']['head']}-{cpu_label()}"
    save_report(RESULTS, stem, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
