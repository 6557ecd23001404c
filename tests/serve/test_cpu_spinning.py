"""FUSIONCAM_CPU_SPINNING=0 (what `fusioncam serve` sets unless told otherwise): ONNX Runtime's CPU sessions are
created with intra-op spinning off, and their maps do not change.

No KServe import here (its protobuf symbols clash with tritonclient.grpc's, which test_protocols imports).
"""

from __future__ import annotations

import numpy as np
import pytest

import fusioncam
from fusioncam.bundle import load_bundle
from fusioncam.runtime.cpu_backend import CPU_SPINNING_ENV, cpu_session
from tests.support.tiny_models import tiny_bundle_at

SPINNING_KEY = "session.intra_op.allow_spinning"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle_at(tmp_path_factory.mktemp("spinning"), size=16, seed=4)


def spinning_entry(bundle) -> str | None:
    """The session's allow_spinning entry, None when it was never set (ONNX Runtime's default: spinning)."""
    options = cpu_session(load_bundle(bundle).explain_path).get_session_options()
    try:
        return options.get_session_config_entry(SPINNING_KEY)
    except RuntimeError as exc:  # ONNX Runtime's answer for a key it never got
        assert SPINNING_KEY in str(exc)
        return None


@pytest.mark.parametrize("value, expected", [("0", "0"), ("1", None), ("", None)])
def test_the_spinning_variable_reaches_the_session_options(bundle, monkeypatch, value, expected):
    monkeypatch.setenv(CPU_SPINNING_ENV, value)
    assert spinning_entry(bundle) == expected


def test_maps_are_the_same_with_spinning_off(bundle, monkeypatch):
    images = np.random.default_rng(5).standard_normal((3, 3, 16, 16)).astype(np.float32)
    monkeypatch.delenv(CPU_SPINNING_ENV, raising=False)
    with fusioncam.Explainer(bundle, device="cpu") as spinning:
        want = spinning.explain(images, methods=("gradcam", "fusion"))
    monkeypatch.setenv(CPU_SPINNING_ENV, "0")
    with fusioncam.Explainer(bundle, device="cpu") as sleeping:
        got = sleeping.explain(images, methods=("gradcam", "fusion"))
    for method in ("gradcam", "fusion"):
        np.testing.assert_allclose(got.maps[method], want.maps[method], atol=1e-6)
