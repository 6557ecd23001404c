"""The Task interface changed how the runtime is organised, not what it computes: on the CPU, every method's map,
the classes, probabilities, Fusion-CAM's and Union-CAM's betas and Group-CAM's scores equal those of the commit
before it (tests/runtime/data/task_parity_reference.npz, written at that commit by
tests/runtime/data/make_task_parity_reference.py), for a classifier (exact, fast mode, pytorch-grad-cam compat,
float16 scorer) and a segmentation model (predicted, box and mask regions; exact, fast mode, float16 scorer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.runtime.task_parity_cases import CASES, run_case

REFERENCE = Path(__file__).parent / "data" / "task_parity_reference.npz"
TOLERANCE = 1e-6  # the stated bound; the arrays are in fact compared for bit equality below where it holds


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("task_parity")


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_results_equal_the_reference_commit(case, reference, bundles) -> None:
    got = run_case(case, bundles)
    expected = {key.split("/", 1)[1]: value for key, value in reference.items() if key.startswith(f"{case}/")}
    assert expected, f"the reference has no arrays for {case}"
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert got[key].shape == value.shape and got[key].dtype == value.dtype, key
        if value.dtype.kind in "biu":
            assert np.array_equal(got[key], value), key
        else:
            assert np.abs(got[key].astype(np.float64) - value).max() <= TOLERANCE, key


def test_reference_names_its_commit(reference) -> None:
    assert len(str(reference["commit"])) == 40
