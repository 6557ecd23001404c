"""fusioncam.pytorch_grad_cam.AblationCAM's pytorch-grad-cam arguments: batch_size is honoured (the head-graph rows
per run; the map equals pytorch-grad-cam 1.5.7's at that batch size), pytorch-grad-cam's default AblationLayer is
accepted, and another ablation layer or ratio_channels_to_ablate below 1.0 is a clear InputError."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam (grad-cam) is in the test extra")

import fusioncam.pytorch_grad_cam as drop_in  # noqa: E402
from fusioncam.errors import InputError  # noqa: E402
from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit  # noqa: E402
from tests.support.small_cnn import images, max_diff  # noqa: E402


def test_batch_size_is_the_head_graph_batch_and_keeps_the_library_map(model):
    x = torch.from_numpy(images(2, 32, seed=21))
    layer = model.features[3]  # the ReLU's output: ablated to 0, as the library's AblationLayer does here
    with pytorch_grad_cam.AblationCAM(model=model, target_layers=[layer], batch_size=5) as cam:
        theirs = cam(input_tensor=x, targets=None)
    with drop_in.AblationCAM(model=model, target_layers=[layer], batch_size=5, device="cpu") as cam:
        assert cam.batch_size == 5
        ours = cam(input_tensor=x, targets=None)
        assert [explainer.batch_size for explainer in cam._explainers.values()] == [5]
    with drop_in.AblationCAM(model=model, target_layers=[layer], device="cpu") as cam:
        assert cam.batch_size == 32  # the library's default
        default = cam(input_tensor=x, targets=None)
    assert theirs.max() > 0.99
    assert max_diff(ours, theirs) <= 1e-4
    assert max_diff(default, ours) <= 1e-6


def test_the_default_ablation_layer_is_accepted(model):
    x = images(1, 32, seed=22)
    with drop_in.AblationCAM(model=model, target_layers=[model.features[3]], ablation_layer=AblationLayer(),
                             device="cpu") as cam:
        given = cam(input_tensor=x, targets=[1])
    with drop_in.AblationCAM(model=model, target_layers=[model.features[3]], device="cpu") as cam:
        left_out = cam(input_tensor=x, targets=[1])
    np.testing.assert_array_equal(given, left_out)


@pytest.mark.parametrize("layer", [AblationLayerVit(), torch.nn.Identity()])
def test_other_ablation_layers_are_refused(model, layer):
    with pytest.raises(InputError, match=f"ablation_layer={type(layer).__name__} is not supported.*AblationLayer"):
        drop_in.AblationCAM(model=model, target_layers=[model.features[3]], ablation_layer=layer)


@pytest.mark.parametrize("ratio", [0.5, 0.0, True, "all"])
def test_a_channel_ratio_below_one_is_refused(model, ratio):
    with pytest.raises(InputError, match="ratio_channels_to_ablate=.* is not supported.*every channel"):
        drop_in.AblationCAM(model=model, target_layers=[model.features[3]], ratio_channels_to_ablate=ratio)
    assert drop_in.AblationCAM(model=model, target_layers=[model.features[3]],
                               ratio_channels_to_ablate=1.0).ratio_channels_to_ablate == 1.0


def test_batch_size_must_be_a_positive_integer(model):
    with pytest.raises(InputError, match="batch_size"):
        drop_in.AblationCAM(model=model, target_layers=[model.features[3]], batch_size=0)
