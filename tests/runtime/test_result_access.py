"""Every method's output is reachable the same way, by name; a new method reaches the result through the registry
and its own function only; the attributes of earlier versions read the same values."""

from __future__ import annotations

import numpy as np
import pytest

import fusioncam
from fusioncam.errors import InputError
from fusioncam.runtime.methods import METHODS, MethodOutput, registry
from tests.support.tiny_models import tiny_bundle_at

SIZE = 12


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle_at(tmp_path_factory.mktemp("tiny"), size=SIZE, seed=7)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(9).uniform(-2, 2, (2, 3, SIZE, SIZE)).astype(np.float32)


def test_every_method_by_name_and_the_old_attributes(bundle, images):
    result = fusioncam.Explainer(bundle, device="cpu", batch_size=8).explain(images, methods=METHODS)
    for name in METHODS:
        assert result.method(name).map is result.maps[name]
        assert result.method(name).facts is result.facts[name]
    fusion, union, group = result.method("fusion"), result.method("unioncam"), result.method("groupcam")
    assert result.fusion is fusion.map
    assert result.denoised is fusion.maps["denoised"] and result.combined is fusion.maps["combined"]
    assert result.betas is fusion.facts["betas"] and result.degenerate is fusion.facts["degenerate"]
    assert result.union_betas is union.facts["betas"]
    assert result.union_kept_combined is union.facts["kept_combined"]
    assert result.group_scores is group.facts["group_scores"]
    assert result.group_forwards is group.facts["group_forwards"]
    assert result.gradcam is result.maps["gradcam"] and result.scorecam is result.maps["scorecam"]
    assert list(result.beta_row(1)) == ["b_den", "b_reg", "b_dr", "b_reg2", "b0"]
    assert result.beta_row(1)["b_dr"] == float(result.betas["b_dr"][1])
    assert result.betas["b0"].dtype == np.float64 and result.degenerate.dtype == bool  # host NumPy, dtypes kept
    assert result.group_forwards.dtype == np.int64 and isinstance(result.group_scores, np.ndarray)


def test_what_did_not_run_is_none_and_an_unknown_method_is_an_input_error(bundle, images):
    result = fusioncam.Explainer(bundle, device="cpu", batch_size=8).explain(images, methods="gradcam++")
    assert result.fusion is None and result.betas is None and result.union_betas is None
    assert result.gradcam is None and result.scorecam is None and result.forwards_run is None
    assert result.beta_row(0) == {} and result.union_beta_row(0) == {}
    with pytest.raises(InputError, match="'fusion' was not computed.*gradcam\\+\\+"):
        result.method("fusion")


def test_a_new_method_needs_only_the_registry_and_its_own_function(bundle, images, monkeypatch):
    def brightest(engine) -> MethodOutput:
        """A toy method: the Grad-CAM map squared, and how bright each image's map is."""
        squared = engine.gradcam * engine.gradcam
        return MethodOutput(squared, maps={"source": engine.gradcam},
                            facts={"brightness": squared.reshape(len(squared), -1).mean(axis=1)})

    toy = registry.Method("brightest", "Brightest", brightest, ("gradcam",))
    monkeypatch.setitem(registry.REGISTRY, "brightest", toy)
    monkeypatch.setattr(registry, "METHODS", (*registry.METHODS, "brightest"))
    explainer = fusioncam.Explainer(bundle, device="cpu", batch_size=8)
    result = explainer.explain(images, methods=("brightest", "gradcam"))
    toy_result = result.method("brightest")
    want = result.maps["gradcam"].astype(np.float32) ** 2
    np.testing.assert_array_equal(toy_result.map, want)
    np.testing.assert_array_equal(toy_result.maps["source"], result.maps["gradcam"])
    np.testing.assert_array_equal(toy_result.facts["brightness"], want.reshape(2, -1).mean(axis=1))
