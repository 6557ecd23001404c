"""The walk of `differentiate`: which nodes it visits, how it accumulates, and the errors it raises."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import helper

from fusioncam.errors import LayerError, UnsupportedOpError
from fusioncam.export.autodiff import differentiate
from fusioncam.export.grad_rules import supported_ops
from tests.support.onnx_graphs import CLASSES, assert_close, check_against_torch, gradient_session, head_nodes, make_model

node = helper.make_node
RNG = np.random.default_rng(7)


def randn(*shape: int) -> np.ndarray:
    """Standard-normal float32 test data."""
    return RNG.standard_normal(shape).astype(np.float32)


def _cnn(opset: int) -> tuple[onnx.ModelProto, dict, dict]:
    """x -> Conv -> Relu ('feat') -> Conv + residual 'feat' -> ReduceMean(H, W) -> Gemm -> logits."""
    w1, w2, fc = randn(4, 3, 3, 3), randn(4, 4, 3, 3), randn(CLASSES, 4)
    mean = (node("ReduceMean", ["res", "hw"], ["pooled"], keepdims=0) if opset >= 18
            else node("ReduceMean", ["res"], ["pooled"], axes=[2, 3], keepdims=0))
    nodes = [node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             node("Relu", ["c1"], ["feat"], name="relu1"),
             node("Conv", ["feat", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv2"),
             node("MaxPool", ["feat"], ["mp"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             node("Add", ["c2", "mp"], ["res"], name="residual"), mean,
             node("Gemm", ["pooled", "fc"], ["logits"], transB=1, name="fc")]
    inits = {"w1": w1, "w2": w2, "fc": fc, "hw": np.array([2, 3], np.int64)}
    model = make_model(nodes, [3, 6, 6], inits, opset=opset)
    weights = {k: torch.from_numpy(v) for k, v in inits.items()}
    return model, inits, weights


def _torch_cnn_grad(weights: dict, x: np.ndarray, seed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits of the `_cnn` model and d(sum(logits * seed))/d(feat) by torch autograd."""
    feat = F.relu(F.conv2d(torch.from_numpy(x), weights["w1"], padding=1)).detach().requires_grad_(True)
    res = F.conv2d(feat, weights["w2"], padding=1, stride=2) + F.max_pool2d(feat, 2, 2)
    logits = res.mean(dim=(2, 3)) @ weights["fc"].T
    (grad,) = torch.autograd.grad((logits * torch.from_numpy(seed)).sum(), feat)
    return logits.detach().numpy(), grad.numpy()


@pytest.mark.parametrize("opset", [17, 18, 20])
@pytest.mark.parametrize("batch", [1, 3])
def test_intermediate_feature_map_matches_torch(opset: int, batch: int) -> None:
    """wrt an inner feature map used twice (conv branch + pool branch), opset 17 (attr axes) and 18+ (inputs)."""
    model, _, weights = _cnn(opset)
    x, seed = randn(batch, 3, 6, 6), randn(batch, CLASSES)
    logits, grad = gradient_session(model, wrt="feat").run(["logits", "grad_out"], {"x": x, "seed": seed})
    want_logits, want_grad = _torch_cnn_grad(weights, x, seed)
    assert_close(logits, want_logits, what="logits")
    assert_close(grad, want_grad)


def test_one_hot_seed_gives_each_image_its_own_target() -> None:
    """Seeding with a one-hot built from the logits (as the explain graph does): per-image target gradients."""
    model, _, weights = _cnn(17)
    model.graph.input.pop()  # drop the `seed` input: the seed is computed in-graph instead
    classes = onnx.numpy_helper.from_array(np.arange(CLASSES, dtype=np.int64).reshape(1, -1), "classes")
    model.graph.initializer.append(classes)
    model.graph.node.extend([
        node("ArgMax", ["logits"], ["top"], axis=1, keepdims=1),
        node("Equal", ["top", "classes"], ["hot"]),
        node("Cast", ["hot"], ["seed"], to=onnx.TensorProto.FLOAT)])
    x = randn(3, 3, 6, 6)
    logits, grad = gradient_session(model, wrt="feat").run(["logits", "grad_out"], {"x": x})
    one_hot = np.eye(CLASSES, dtype=np.float32)[logits.argmax(1)]
    _, want = _torch_cnn_grad(weights, x, one_hot)
    assert_close(grad, want)


def test_shape_arithmetic_on_the_path_is_skipped() -> None:
    """Reshape(r, Concat(Shape(r)[0:1], [-1])) and int64 Div on shapes carry no gradient and need no rule."""
    nodes = [node("Relu", ["x"], ["r"]),
             node("Shape", ["r"], ["rs"]), node("Slice", ["rs", "zero", "one"], ["n"]),
             node("Gather", ["rs", "one_scalar"], ["c"]), node("Div", ["c", "two"], ["half"]),
             node("Unsqueeze", ["half", "zero"], ["half1"]),
             node("Concat", ["n", "half1", "minus_one"], ["target_shape"], axis=0),
             node("Reshape", ["r", "target_shape"], ["y"])]
    inits = {"zero": np.array([0], np.int64), "one": np.array([1], np.int64), "minus_one": np.array([-1], np.int64),
             "one_scalar": np.array(1, np.int64), "two": np.array(2, np.int64)}
    check_against_torch(nodes, randn(3, 4, 3, 3), lambda t: F.relu(t).reshape(t.shape[0], 2, -1), inits)


def test_unsupported_op_only_feeding_shapes_is_fine() -> None:
    """A rule-less op whose output only reaches the logits through Shape gets no gradient, so no error."""
    nodes = [node("Softplus", ["x"], ["sp"], name="softplus_for_shape"), node("Shape", ["sp"], ["shape"]),
             node("Relu", ["x"], ["r"]), node("Reshape", ["r", "shape"], ["y"])]
    check_against_torch(nodes, randn(3, 2, 3), F.relu)


def test_unsupported_op_error_names_op_node_and_supported_list() -> None:
    nodes = [node("Softplus", ["x"], ["y"], name="my_softplus"), *head_nodes("y")]
    model = make_model(nodes, [5], {"head_w": randn(5, CLASSES)})
    with pytest.raises(UnsupportedOpError) as info:
        differentiate(model, wrt="x", of="logits", seed="seed", grad_name="g")
    message = str(info.value)
    assert "'Softplus'" in message and "'my_softplus'" in message
    assert str(supported_ops()) in message and "'Conv'" in message


def test_unsupported_op_before_wrt_is_ignored() -> None:
    """Ops upstream of `wrt` are never differentiated."""
    nodes = [node("Softplus", ["x"], ["sp"]), node("Relu", ["sp"], ["feat"]), *head_nodes("feat")]
    model = make_model(nodes, [5], {"head_w": randn(5, CLASSES)})
    x, seed = randn(2, 5), randn(2, CLASSES)
    (grad,) = gradient_session(model, wrt="sp").run(["grad_out"], {"x": x, "seed": seed})
    sp = np.log1p(np.exp(x))
    assert_close(grad, (seed @ _head_weight(model).T) * (sp > 0))


def _head_weight(model: onnx.ModelProto) -> np.ndarray:
    """The head weight stored in `model`."""
    return next(onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name == "head_w")


def test_non_differentiable_input_on_the_path_is_an_error() -> None:
    """Clip's `min` computed from x: the rule only differentiates input 0, so it must refuse, not drop it."""
    nodes = [node("ReduceMin", ["x"], ["lo"], keepdims=0, axes=[0, 1]), node("Clip", ["x", "lo"], ["y"], name="clip"),
             *head_nodes("y")]
    model = make_model(nodes, [5], {"head_w": randn(5, CLASSES)})
    with pytest.raises(UnsupportedOpError, match="'clip'.*inputs \\[1\\]"):
        differentiate(model, wrt="x", of="logits", seed="seed", grad_name="g")


def test_of_not_depending_on_wrt_is_a_layer_error() -> None:
    nodes = [node("Relu", ["x"], ["side"]), node("Neg", ["side"], ["unused"]), *head_nodes("x")]
    model = make_model(nodes, [5], {"head_w": randn(5, CLASSES)})
    with pytest.raises(LayerError, match="does not depend on 'side'"):
        differentiate(model, wrt="side", of="logits", seed="seed", grad_name="g")


def test_dependence_only_through_shapes_is_a_layer_error() -> None:
    nodes = [node("Relu", ["x"], ["feat"]), node("Shape", ["feat"], ["s"]), node("Reshape", ["x", "s"], ["y"]),
             *head_nodes("y")]
    model = make_model(nodes, [5], {"head_w": randn(5, CLASSES)})
    with pytest.raises(LayerError):
        differentiate(model, wrt="feat", of="logits", seed="seed", grad_name="g")


def test_unknown_wrt_is_a_layer_error() -> None:
    model = make_model(head_nodes("x"), [5], {"head_w": randn(5, CLASSES)})
    with pytest.raises(LayerError, match="'no_such_tensor'"):
        differentiate(model, wrt="no_such_tensor", of="logits", seed="seed", grad_name="g")


def test_grad_name_collision_is_a_layer_error() -> None:
    model = make_model(head_nodes("x"), [5], {"head_w": randn(5, CLASSES)})
    with pytest.raises(LayerError, match="head_flat"):
        differentiate(model, wrt="x", of="logits", seed="seed", grad_name="head_flat")


def test_input_model_is_not_modified_and_outputs_are_kept() -> None:
    model, _, _ = _cnn(17)
    before = model.SerializeToString()
    out = differentiate(model, wrt="feat", of="logits", seed="seed", grad_name="g")
    assert model.SerializeToString() == before
    assert [o.name for o in out.graph.output] == ["logits"]
    assert [i.name for i in out.graph.input] == ["x", "seed"]
    pool = next(n for n in out.graph.node if n.op_type == "MaxPool")
    assert len(pool.output) == 2 and pool.output[1]  # the rule asked the forward MaxPool for its Indices
    new_names = [n.name for n in out.graph.node[len(model.graph.node):]]
    assert len(set(new_names)) == len(new_names) and all(name.startswith("grad/") for name in new_names)


def test_wrt_equal_to_of_gives_the_seed() -> None:
    model = make_model(head_nodes("x"), [5], {"head_w": randn(5, CLASSES)})
    seed = randn(3, CLASSES)
    (grad,) = gradient_session(model, wrt="logits").run(["grad_out"], {"x": randn(3, 5), "seed": seed})
    np.testing.assert_array_equal(grad, seed)


def test_emitted_reduce_mean_follows_the_model_opset() -> None:
    """ReduceMean takes `axes` as an attribute before opset 18 and as an input from 18."""
    for opset, n_inputs in ((17, 1), (18, 2)):
        nodes = [node("LayerNormalization", ["x", "s"], ["y"]), *head_nodes("y")]
        model = make_model(nodes, [6], {"s": randn(6), "head_w": randn(6, CLASSES)}, opset=opset)
        out = differentiate(model, wrt="x", of="logits", seed="seed", grad_name="g")
        means = [n for n in out.graph.node if n.op_type == "ReduceMean"]
        assert means and all(len(n.input) == n_inputs for n in means)
        onnx.checker.check_model(out, full_check=True)


def test_broadcast_of_a_dim_unknown_at_export_time() -> None:
    """x * x[0:k] with k = N // N computed at run time: the broadcast axis is only known when the graph runs."""
    nodes = [node("Shape", ["x"], ["xs"]), node("Slice", ["xs", "zero", "one"], ["n"]),
             node("Div", ["n", "n"], ["k"]), node("Slice", ["x", "zero", "k", "zero"], ["first"]),
             node("Mul", ["x", "first"], ["y"])]
    inits = {"zero": np.array([0], np.int64), "one": np.array([1], np.int64)}
    check_against_torch(nodes, randn(3, 4), lambda t: t * t[0:1], inits)
