"""Writes task_parity_reference.npz: the maps, classes, probabilities and Fusion-CAM betas that fusioncam gives on
the CPU for a small seeded classifier and a seeded LRASPP segmentation model, all seven methods.

Run it at the commit whose results are the reference (the file records that commit), from that commit's tree:

    PYTHONPATH=<tree> python tests/runtime/data/make_task_parity_reference.py <commit> <out.npz>

tests/runtime/test_task_parity.py rebuilds the same bundles with the current code and compares.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from tests.runtime.task_parity_cases import CASES, run_case


def main(commit: str, out: str) -> None:
    arrays: dict[str, np.ndarray] = {"commit": np.array(commit)}
    with tempfile.TemporaryDirectory() as folder:
        for name in CASES:
            for key, value in run_case(name, Path(folder)).items():
                arrays[f"{name}/{key}"] = value
    np.savez_compressed(out, **arrays)
    print(f"wrote {out}: {len(arrays)} arrays")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
