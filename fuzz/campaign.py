"""A long fuzzing run of one harness: libFuzzer is restarted after each finding until the time is spent, and the
inputs tried, the findings and the corpus size are written as JSON (the README's "Reliability" figures).

    python fuzz/campaign.py images_fuzz --minutes 10 --out fuzz-results/images.json
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repository: benchmarks.report describes the machine

from benchmarks.report import cpu_model  # noqa: E402

RUNS_DONE = re.compile(r"^Done (\d+) runs in", re.MULTILINE)
PROGRESS = re.compile(r"^#(\d+)\s", re.MULTILINE)
ARTIFACT = re.compile(r"Test unit written to (\S+)")
KIND = re.compile(r"^(?:SUMMARY: libFuzzer: (.+)|=== Uncaught Python exception: ===\n(.+))$", re.MULTILINE)


def fuzz(harness: str, seconds: float, corpus: Path, artifacts: Path, rss_limit_mb: int, timeout_s: int) -> dict:
    """Run the harness until `seconds` are spent; each libFuzzer session's inputs and findings are collected."""
    deadline = time.monotonic() + seconds
    sessions, findings, inputs = 0, [], 0
    while (left := deadline - time.monotonic()) > 5:
        sessions += 1
        command = [sys.executable, str(HERE / f"{harness}.py"), f"-max_total_time={int(left)}",
                   f"-rss_limit_mb={rss_limit_mb}", f"-timeout={timeout_s}", f"-artifact_prefix={artifacts}/",
                   "-print_final_stats=1", str(corpus)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent)
        log = done.stdout + done.stderr
        counted = RUNS_DONE.findall(log) or PROGRESS.findall(log)
        inputs += int(counted[-1]) if counted else 0
        if done.returncode != 0:
            kind = KIND.findall(log)
            findings.append({"session": sessions, "returncode": done.returncode,
                             "what": [k for pair in kind for k in pair if k][-2:],
                             "artifact": (ARTIFACT.findall(log) or [None])[-1]})
    return {"harness": harness, "seconds": seconds, "libfuzzer_sessions": sessions, "inputs_tried": inputs,
            "findings": findings, "corpus_files": sum(1 for _ in corpus.iterdir())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("harness", help="images_fuzz, bundle_fuzz or onnx_export_fuzz")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", type=Path, required=True, help="JSON summary to write")
    parser.add_argument("--corpus", type=Path, help="corpus folder (default: a new temporary one, seeded)")
    parser.add_argument("--rss-limit-mb", type=int, default=3072)
    parser.add_argument("--timeout", type=int, default=60, help="seconds one input may take")
    args = parser.parse_args()
    corpus = args.corpus or Path(tempfile.mkdtemp(prefix=f"{args.harness}-corpus-"))
    artifacts = args.out.parent / f"{args.harness}-findings"
    artifacts.mkdir(parents=True, exist_ok=True)
    summary = fuzz(args.harness, args.minutes * 60, corpus, artifacts, args.rss_limit_mb, args.timeout)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout
    summary.update({"machine": {"cpu": cpu_model(), "python": platform.python_version(),
                                "note": "shared 2-core machine, busy with other work during the run"},
                    "commit": commit.strip(), "corpus": str(corpus)})
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
