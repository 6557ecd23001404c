"""FullGrad: fusioncam's in-graph map equals pytorch-grad-cam 1.5.7's FullGrad (the library itself: same weights,
images and targets; <= 1e-4) on a small CNN with convolution biases and BatchNorm layers (fast) and a seeded
ResNet-18 (slow); the bias layers found in the ONNX graph are the library's; the drop-in class with no target
layers; the differentiator's extra gradient outputs against torch autograd and its error for a tensor off the path."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam (grad-cam) is in the test extra")

import fusioncam  # noqa: E402
from fusioncam import pytorch_grad_cam as drop_in  # noqa: E402
from fusioncam.errors import LayerError  # noqa: E402
from fusioncam.export.autodiff import differentiate  # noqa: E402
from fusioncam.export.fullgrad_graph import bias_layers  # noqa: E402
from fusioncam.runtime.methods import methods_for_task  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from tests.support.small_cnn import images, max_diff  # noqa: E402


class BiasNet(torch.nn.Module):
    """A convolution with a bias (no BatchNorm), one without a bias before a BatchNorm, one with both, a residual
    add and a linear head: every kind of bias layer FullGrad reads."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(12)
        self.conv3 = torch.nn.Conv2d(12, 12, 3, stride=2, padding=1, bias=False)
        self.bn3 = torch.nn.BatchNorm2d(12)
        self.head = torch.nn.Linear(12, 5)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)) + x[:, :, ::2, ::2])
        return self.head(x.mean(dim=(2, 3)))


def seeded_bias_net() -> BiasNet:
    torch.manual_seed(0)
    model = BiasNet()
    with torch.no_grad():  # BatchNorm statistics and affine parameters that are not the identity
        for bn in (model.bn2, model.bn3):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return model.eval()


def library_fullgrad(model, x: np.ndarray, targets) -> np.ndarray:
    wanted = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets]
    with pytorch_grad_cam.FullGrad(model=model, target_layers=[]) as cam:
        return cam(input_tensor=torch.from_numpy(x), targets=wanted)


@pytest.fixture(scope="module")
def bias_net(tmp_path_factory):
    model = seeded_bias_net()
    bundle = tmp_path_factory.mktemp("fullgrad") / "bias.bundle"
    fusioncam.export_torch(model, "conv3", bundle, input_size=(32, 32))
    return model, bundle


@pytest.mark.parametrize("targets", [[1, 4, 0], None])
def test_fullgrad_matches_the_library(bias_net, targets):
    model, bundle = bias_net
    x = images(3, 32, seed=5)
    theirs = library_fullgrad(model, x, targets)
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        result = explainer.explain(x, targets=targets, methods=("gradcam", "fullgrad"))
    ours = result.maps["fullgrad"]
    assert ours.dtype == np.float32 and ours.shape == theirs.shape == (3, 32, 32)
    assert theirs.max() > 0.99 and max_diff(ours, theirs) <= 1e-4
    assert max_diff(ours, result.maps["gradcam"]) > 0.1  # a map of its own, not the target layer's


def test_the_graphs_bias_layers_are_the_librarys(bias_net):
    """conv1 (its own bias), bn2 and bn3 (folded into their convolutions): the library's three bias layers, with its
    BatchNorm bias b - mean * w / sqrt(var + eps)."""
    model, bundle = bias_net
    layers = bias_layers(onnx.load(str(bundle / "scorer.onnx"), load_external_data=False))
    with pytorch_grad_cam.FullGrad(model=model, target_layers=[]) as cam:
        theirs = cam.bias_data
    assert len(layers) == len(theirs) == 3
    for (_, ours, _), expected in zip(layers, theirs):
        assert max_diff(ours, expected) <= 1e-5


@pytest.mark.slow  # two exports into the cache and six augmented copies: several seconds
def test_drop_in_fullgrad_without_target_layers(bias_net, tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONCAM_CACHE", str(tmp_path / "cache"))
    model, _ = bias_net
    x = images(2, 32, seed=9)
    with drop_in.FullGrad(model=model, target_layers=[], device="cpu") as cam:  # the library's own target objects
        ours = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(2)] * 2)
    assert max_diff(ours, library_fullgrad(model, x, [2, 2])) <= 1e-4
    with drop_in.FullGrad(model=model, target_layers=[model.conv1, model.bn3], device="cpu") as cam:
        smoothed = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(2)] * 2, aug_smooth=True)
    with pytorch_grad_cam.FullGrad(model=model, target_layers=[]) as cam:
        expected = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(2)] * 2, aug_smooth=True)
    assert max_diff(smoothed, expected) <= 1e-4 and max_diff(smoothed, ours) > 1e-3


def test_fullgrad_runs_on_classifier_bundles_only():
    assert "fullgrad" in methods_for_task("classification")
    assert "fullgrad" not in methods_for_task("segmentation") and "fullgrad" not in methods_for_task("detection")


def test_extra_gradients_of_one_backward_pass_match_autograd(bias_net):
    """differentiate(also=...) gives the gradient of every named tensor from the same pass: here the bias layers'
    outputs, against torch autograd of the same outputs (the BatchNorm outputs for the folded convolutions)."""
    model, bundle = bias_net
    scorer = onnx.load(str(bundle / "scorer.onnx"))
    seed = onnx.helper.make_tensor_value_info("seed", onnx.TensorProto.FLOAT, ["N", 5])
    scorer.graph.input.append(seed)
    layers = bias_layers(scorer)
    wanted = {name: f"grad_{i}" for i, (name, _, _) in enumerate(layers)}
    graph = differentiate(scorer, wrt="input", of="logits", seed="seed", grad_name="grad_input", also=wanted)
    graph.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in ["grad_input", *wanted.values()])
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    x = images(2, 32, seed=1)
    weights = np.random.default_rng(2).standard_normal((2, 5)).astype(np.float32)
    got = session.run(["grad_input", *wanted.values()], {"input": x, "seed": weights})

    outputs = []
    hooks = [module.register_forward_hook(lambda _m, _i, out: outputs.append(out))
             for module in (model.conv1, model.bn2, model.bn3)]
    xt = torch.from_numpy(x).requires_grad_(True)
    logits = model(xt)
    for hook in hooks:
        hook.remove()
    expected = torch.autograd.grad((logits * torch.from_numpy(weights)).sum(), [xt, *outputs])
    for ours, theirs in zip(got, expected):
        scale = float(theirs.abs().max())
        assert scale > 0 and max_diff(ours, theirs.numpy()) <= 1e-5 * scale


def test_a_tensor_off_the_path_is_a_layer_error(bias_net):
    _, bundle = bias_net
    scorer = onnx.load(str(bundle / "scorer.onnx"))
    scorer.graph.input.append(onnx.helper.make_tensor_value_info("seed", onnx.TensorProto.FLOAT, ["N", 5]))
    first = bias_layers(scorer)[0][0]
    with pytest.raises(LayerError, match="no gradient reaches off_path"):
        differentiate(scorer, wrt=first, of="logits", seed="seed", grad_name="g", also={"input": "off_path"})


@pytest.mark.slow
def test_fullgrad_matches_the_library_on_resnet18(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    bundle = tmp_path / "r18.bundle"
    fusioncam.export_torch(model, "layer4", bundle, input_size=(64, 64))
    x = images(2, 64, seed=4)
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        ours = explainer.explain(x, targets=[3, 7], methods=("fullgrad",)).maps["fullgrad"]
    theirs = library_fullgrad(model, x, [3, 7])
    assert theirs.max() > 0.99 and max_diff(ours, theirs) <= 1e-4


def test_a_bias_layer_off_the_image_path_is_named():
    """A convolution of a constant (not of the image) feeds the logits: it gets no gradient from the image's pass, and
    the LayerError names that layer."""
    from onnx import TensorProto, helper, numpy_helper

    from fusioncam.export.fullgrad_graph import build_fullgrad

    rng = np.random.default_rng(0)
    weights = {name: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w1", (2, 3, 3, 3)), ("b1", (2,)), ("w2", (2, 3, 3, 3)), ("b2", (2,)),
                                   ("constant_map", (1, 3, 4, 4)))}
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["a"], pads=[1, 1, 1, 1], name="image_conv"),
             helper.make_node("Conv", ["constant_map", "w2", "b2"], ["b"], pads=[1, 1, 1, 1], name="constant_conv"),
             helper.make_node("Add", ["a", "b"], ["sum"], name="add"),
             helper.make_node("GlobalAveragePool", ["sum"], ["pooled"], name="pool"),
             helper.make_node("Flatten", ["pooled"], ["logits"], name="flatten")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
                              list(weights.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(LayerError, match="FullGrad: the outputs of bias layer\\(s\\) 'constant_conv' do not reach"):
        build_fullgrad(model, 2, (4, 4))
