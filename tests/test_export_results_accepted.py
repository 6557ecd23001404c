"""An export's result is accepted wherever a bundle is: Explainer, FusionCAM, and the one resolver that serve and
explain-dataset use (bundle_cache.bundle_for), each giving the bundle the export wrote."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fusioncam
from fusioncam.bundle_cache import bundle_for
from fusioncam.errors import LayerError


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    return fusioncam.export_torch(model, "1", tmp_path_factory.mktemp("exported") / "b.fcam", input_size=(16, 16))


def test_explainer_takes_an_export_result(exported):
    images = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with fusioncam.Explainer(exported, device="cpu") as a, fusioncam.Explainer(exported.bundle.path, device="cpu") as b:
        assert a.bundle.path == exported.bundle.path
        np.testing.assert_array_equal(a.explain(images, methods="gradcam").maps["gradcam"],
                                      b.explain(images, methods="gradcam").maps["gradcam"])


def test_bundle_resolver_of_serve_and_dataset_takes_an_export_result_and_a_bundle(exported):
    assert bundle_for(exported).path == exported.bundle.path
    assert bundle_for(exported.bundle).manifest == exported.bundle.manifest
    with pytest.raises(LayerError, match="cannot explain 'other'"):
        bundle_for(exported, layer="other")


def test_fusioncam_adapter_takes_an_export_result(exported):
    cam = fusioncam.FusionCAM(exported, device="cpu")
    assert cam.bundle((16, 16)).path == exported.bundle.path
