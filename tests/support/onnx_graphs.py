"""Tiny ONNX graphs for the autodiff tests: a body under test, a random linear head, ORT and torch runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from fusioncam.export.autodiff import differentiate

CLASSES = 4


def make_model(nodes: Sequence[onnx.NodeProto], x_shape: Sequence[int], initializers: dict | None = None,
               opset: int = 17, outputs: Sequence[str] = ("logits",), classes: int = CLASSES,
               output_shape: Sequence | None = ("N", CLASSES)) -> onnx.ModelProto:
    """Model with input `x` [N, *x_shape], input `seed` [N, classes] and the given nodes/initializers."""
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()]
    graph = helper.make_graph(
        list(nodes), "under_test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape]),
         helper.make_tensor_value_info("seed", TensorProto.FLOAT, ["N", classes])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, output_shape) for name in outputs],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9 if opset <= 20 else 10
    return model


def head_nodes(feature: str, head_weight: str = "head_w") -> list[onnx.NodeProto]:
    """Flatten(feature) @ head_w -> `logits` [N, classes]: a non-trivial seed for every feature element."""
    return [helper.make_node("Flatten", [feature], ["head_flat"], axis=1, name="head_flatten"),
            helper.make_node("MatMul", ["head_flat", head_weight], ["logits"], name="head_matmul")]


def run_with_gradient(model: onnx.ModelProto, feeds: dict, wrt: str = "x", of: str = "logits") -> tuple:
    """Differentiate `of` w.r.t. `wrt` (seed input `seed`), run with ORT on the CPU, return (logits, grad)."""
    logits, grad = gradient_session(model, wrt, of).run([of, "grad_out"], feeds)
    return logits, grad


def torch_gradient(fn: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, head_w: np.ndarray,
                   seed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Torch autograd of sum(flatten(fn(x)) @ head_w * seed) w.r.t. x: (logits, grad)."""
    xt = torch.from_numpy(x).requires_grad_(True)
    logits = fn(xt).flatten(1) @ torch.from_numpy(head_w)
    (grad,) = torch.autograd.grad((logits * torch.from_numpy(seed)).sum(), xt)
    return logits.detach().numpy(), grad.numpy()


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| relative to max |want|."""
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))


def assert_close(got: np.ndarray, want: np.ndarray, tolerance: float = 1e-4, what: str = "gradient") -> None:
    """Relative max error within `tolerance`, and the reference is not trivially zero."""
    assert np.abs(want).max() > 0, f"{what}: reference is all zeros; the test would prove nothing"
    err = relative_error(got, want)
    assert err <= tolerance, f"{what}: relative max error {err:.2e} > {tolerance:.0e}"


def check_against_torch(nodes: Sequence[onnx.NodeProto], x: np.ndarray, fn: Callable[[torch.Tensor], torch.Tensor],
                        initializers: dict | None = None, opset: int = 17, batches: Sequence[int] = (1, 3),
                        feature: str = "y", rng_seed: int = 0) -> None:
    """Body `x -> feature` + a random head; ORT gradient of the seeded logits must match torch, per batch size."""
    rng = np.random.default_rng(rng_seed)
    features = int(np.prod(fn(torch.from_numpy(x)).shape[1:]))
    head_w = rng.standard_normal((features, CLASSES)).astype(np.float32)
    inits = dict(initializers or {}, head_w=head_w)
    model = make_model([*nodes, *head_nodes(feature)], x.shape[1:], inits, opset)
    session = gradient_session(model)
    for n in batches:
        xb = np.ascontiguousarray(x[:n])
        seed = rng.standard_normal((n, CLASSES)).astype(np.float32)
        logits, grad = session.run(["logits", "grad_out"], {"x": xb, "seed": seed})
        want_logits, want_grad = torch_gradient(fn, xb, head_w, seed)
        assert_close(logits, want_logits, what=f"logits (N={n})")
        assert_close(grad, want_grad, what=f"gradient (N={n})")


def gradient_session(model: onnx.ModelProto, wrt: str = "x", of: str = "logits",
                     full_check: bool = True) -> ort.InferenceSession:
    """ORT session of `model` extended with output `grad_out` = d(sum(of * seed))/d(wrt).

    `full_check` also runs strict ONNX shape inference over the result (off where ONNX and ORT disagree).
    """
    grad_model = differentiate(model, wrt=wrt, of=of, seed="seed", grad_name="grad_out")
    grad_model.graph.output.append(_value_info_like(model, wrt, "grad_out"))
    onnx.checker.check_model(grad_model, full_check=full_check)
    return ort.InferenceSession(grad_model.SerializeToString(), providers=["CPUExecutionProvider"])


def linear_jacobian_gradient(model: onnx.ModelProto, x: np.ndarray, seed: np.ndarray,
                             feeds: dict | None = None) -> np.ndarray:
    """Exact reference for a body that is LINEAR in x: ORT forward on one-hot inputs gives the Jacobian."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    grad = np.zeros_like(x)
    for n in range(x.shape[0]):
        basis = np.eye(x[n].size, dtype=np.float32).reshape(-1, *x.shape[1:])
        seeds = np.repeat(seed[n:n + 1], basis.shape[0], axis=0)
        (logits,) = session.run(["logits"], {"x": basis, "seed": seeds, **(feeds or {})})
        grad[n] = (logits @ seed[n]).reshape(x.shape[1:])
    return grad


def _value_info_like(model: onnx.ModelProto, name: str, new_name: str) -> onnx.ValueInfoProto:
    """A graph-output declaration for `new_name` with the inferred type and shape of tensor `name`."""
    inferred = onnx.shape_inference.infer_shapes(model)
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if info.name == name:
            out = onnx.ValueInfoProto()
            out.CopyFrom(info)
            out.name = new_name
            return out
    raise KeyError(name)
