"""The batcher's lanes and deadlines with real Explainers on a tiny bundle, without a server: which lane a request
takes (from the method registry), and, in a child process (lane_checks.py: the batcher imports KServe, whose
protobuf symbols clash with tritonclient.grpc's in one process), a Grad-CAM job answered while the sweep lane is
held, an expired job dropped without an Explainer call, a running batch stopped at a scorer batch once all its jobs
are abandoned, and the sweep lane's lower CPU priority."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from fusioncam.runtime.methods.registry import METHODS
from fusioncam.serve.lanes import GRADIENT, GRADIENT_METHODS, SHARED, SWEEP, lane_of

ROOT = Path(__file__).resolve().parents[2]


def test_lanes_follow_the_registry():
    assert GRADIENT_METHODS == {"gradcam", "gradcam++", "xgradcam", "hirescam", "gradcam-elementwise", "layercam",
                                "eigencam", "eigengradcam", "kpcacam", "finercam", "fullgrad", "shapleycam"}
    assert lane_of(()) == GRADIENT and lane_of(("gradcam", "xgradcam")) == GRADIENT
    for method in set(METHODS) - GRADIENT_METHODS:
        assert lane_of((method,)) == SWEEP and lane_of(("gradcam", method)) == SWEEP
    assert lane_of(("gradcam",), separate_lanes=False) == SHARED


@pytest.mark.slow  # two Explainers and a Fusion-CAM in a child process: several seconds on a loaded machine
def test_the_batcher_lanes_deadlines_and_abandoned_work(tmp_path):
    # find_spec, not importorskip: kserve imported in this process clashes with tritonclient.grpc's protobuf symbols
    if importlib.util.find_spec("kserve") is None:
        pytest.skip("the serve extra (kserve) is not installed: pip install 'fusioncam[serve]'")
    run = subprocess.run([sys.executable, "-m", "tests.serve.lane_checks", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "all lane checks passed" in run.stdout
