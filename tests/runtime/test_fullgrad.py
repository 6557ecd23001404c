"""FullGrad: fusioncam's in-graph map equals pytorch-grad-cam 1.5.7's FullGrad (the library itself: same weights,
images and targets; <= 1e-4) on a small CNN with convolution biases and BatchNorm layers (fast), a seeded ResNet-18 and
skimage's chelsea (slow); the bias layers found in the ONNX graph are the library's; the drop-in class with no target
layers; the differentiator's extra gradient outputs against torch autograd and its error for a tensor off the path.

A ReLU whose input is within float32 rounding of 0 may go one way in ONNX Runtime and the other in PyTorch (different
summation orders; the export also folds each BatchNorm into its convolution). FullGrad's input term follows every such
unit's gradient back to the pixels, so one of them can move the map by more than 1e-4: on the seeded ResNet-18 at
224x224 with chelsea, one unit of layer1.1's first ReLU (2.4e-7, where the layer's largest is 2.8) moves it by 1.2e-3.
The 224x224 test runs the library with torch's ReLUs taking ONNX Runtime's side wherever the two differ in sign."""

from __future__ import annotations

from pathlib import Path

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


def randomize_batchnorms(batchnorms) -> None:
    """BatchNorm statistics and affine parameters that are not the identity (from torch's global generator): with
    torch's initialisation every BatchNorm's FullGrad bias is 0 and only the input term counts."""
    with torch.no_grad():
        for bn in batchnorms:
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)


def seeded_bias_net() -> BiasNet:
    torch.manual_seed(0)
    model = BiasNet()
    randomize_batchnorms((model.bn2, model.bn3))
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
    scorer.graph.node.append(onnx.helper.make_node("Relu", ["input"], ["dangling"]))  # the logits never read it
    first = bias_layers(scorer)[0][0]
    with pytest.raises(LayerError, match="no gradient reaches off_path"):
        differentiate(scorer, wrt=first, of="logits", seed="seed", grad_name="g", also={"dangling": "off_path"})


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


def chelsea(size: int) -> np.ndarray:
    from fusioncam.images import IMAGENET_MEAN, IMAGENET_STD, preprocess, sample_images

    image = preprocess(sample_images()["chelsea"], (size, size), IMAGENET_MEAN, IMAGENET_STD)
    return np.ascontiguousarray(image[None], dtype=np.float32)


def input_term_only(model, x: np.ndarray, target: int) -> np.ndarray:
    """FullGrad without the bias terms: |dy/dx * x|, channels scaled to [0, 1], summed, scaled (eager torch)."""
    from pytorch_grad_cam.utils.image import scale_accross_batch_and_channels, scale_cam_image

    xt = torch.from_numpy(x).requires_grad_(True)
    model(xt)[0, target].backward()
    term = np.abs(xt.grad.numpy() * x)
    return scale_cam_image(scale_accross_batch_and_channels(term, x.shape[2:][::-1]).sum(axis=1))


@pytest.mark.slow  # a ResNet-18 export and its FullGrad graph at 112x112
def test_fullgrad_matches_the_library_on_chelsea_with_batchnorm_biases(tmp_path):
    """A real photo and a ResNet-18 whose BatchNorms have biases, so the 20 bias terms count (with torchvision's
    initialisation they are all 0): the map differs from the input term alone, and equals the library's."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    randomize_batchnorms(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bundle = tmp_path / "r18.bundle"
    fusioncam.export_torch(model, "layer4", bundle, input_size=(112, 112))
    x = chelsea(112)
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        ours = explainer.explain(x, targets=[6], methods=("fullgrad",)).maps["fullgrad"]
    theirs = library_fullgrad(model, x, [6])
    assert theirs.max() > 0.99 and max_diff(ours, theirs) <= 1e-4
    assert max_diff(ours, input_term_only(model, x, 6)) > 0.3  # measured 0.96


class OnnxRuntimeReluDecisions:
    """Makes each torch ReLU call take ONNX Runtime's value wherever the two inputs differ in sign (the gradient
    still flows to torch's own tensor), so both sides make the same ReLU decisions; counts the units changed."""

    def __init__(self, model, scorer: Path, x: np.ndarray) -> None:
        graph = onnx.load(str(scorer))
        names = [node.input[0] for node in graph.graph.node if node.op_type == "Relu"]
        graph.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
        session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        self.values = session.run(names, {"input": x})  # in graph order, the order of torch's ReLU calls
        self.calls = self.changed = 0
        self.hooks = [module.register_forward_pre_hook(self.take_side)
                      for module in model.modules() if isinstance(module, torch.nn.ReLU)]

    def take_side(self, _module, args):
        (x,) = args
        theirs = torch.from_numpy(self.values[self.calls])
        self.calls += 1
        assert theirs.shape == x.shape  # the graph's ReLUs and torch's calls pair up
        differs = (theirs > 0) != (x > 0)
        self.changed += int(differs.sum())
        return (x + ((theirs - x) * differs).detach(),)

    def __enter__(self) -> "OnnxRuntimeReluDecisions":
        return self

    def __exit__(self, *_exc) -> None:
        for hook in self.hooks:
            hook.remove()


@pytest.mark.slow  # a ResNet-18 export and its FullGrad graph at 224x224, about 40 s on 2 cores
def test_fullgrad_on_chelsea_at_224_differs_from_the_library_only_by_relu_decisions(tmp_path):
    """benchmarks/every_method_speed.py's case (seeded ResNet-18, 1000 classes, chelsea at 224x224, its top class):
    the maps differ by 1.2e-3 here (torch 2.14.1, ONNX Runtime 1.32, one ReLU unit on each side of 0). With torch's
    ReLUs taking ONNX Runtime's side, the library's map equals fusioncam's."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    bundle = tmp_path / "r18.bundle"
    fusioncam.export_torch(model, "layer4", bundle, input_size=(224, 224))
    x = chelsea(224)
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        result = explainer.explain(x, methods=("fullgrad",))
    ours, target = result.maps["fullgrad"], int(result.classes[0])
    with torch.no_grad():
        assert target == int(model(torch.from_numpy(x)).argmax())
    with OnnxRuntimeReluDecisions(model, bundle / "scorer.onnx", x) as decisions:
        theirs = library_fullgrad(model, x, [target])
    assert decisions.calls == 17 and decisions.changed <= 20  # the stem's ReLU, two per block; a few of 2.3M units
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
