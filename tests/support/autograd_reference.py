"""Torch autograd reference for the explain graph: logits, a module's activations and dy_c/dA per image."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import torch


def non_inplace(model: torch.nn.Module) -> torch.nn.Module:
    """Eval copy with in-place ops off, so a hooked activation is not overwritten by a following ReLU."""
    clone = copy.deepcopy(model).eval()
    for module in clone.modules():
        if hasattr(module, "inplace") and isinstance(module.inplace, bool):
            module.inplace = False
    return clone


def autograd_layer_gradients(model: torch.nn.Module, layer: torch.nn.Module, images: np.ndarray, targets) -> dict:
    """Logits [N,C], A [N,K,h,w], d(sum_n y[n, c_n])/dA and the targets used (-1 -> arg-max)."""
    captured = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        x = torch.from_numpy(images)
        logits = model(x)
    finally:
        handle.remove()
    acts = captured[-1]
    targets = np.asarray(targets, dtype=np.int64)
    used = np.where(targets < 0, logits.argmax(dim=1).numpy(), targets)
    score = logits[torch.arange(len(used)), torch.from_numpy(used)].sum()
    (grads,) = torch.autograd.grad(score, acts)
    return {"logits": logits.detach().numpy(), "activations": acts.detach().numpy(),
            "gradients": grads.numpy(), "target_used": used}


def run_explain_graph(bundle_path, images: np.ndarray, targets) -> dict:
    """Run a bundle's explain graph with ONNX Runtime on the CPU."""
    session = ort.InferenceSession(str(bundle_path / "explain.onnx"), providers=["CPUExecutionProvider"])
    names = ["logits", "activations", "gradients", "target_used"]
    outputs = session.run(names, {"input": images, "target": np.asarray(targets, dtype=np.int64)})
    return dict(zip(names, outputs))


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| relative to max |want| (the issue's parity measure)."""
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))


def assert_parity(got: dict, want: dict, tolerance: float = 1e-4) -> None:
    """Logits, activations and gradients within `tolerance` relative max error; identical targets used."""
    np.testing.assert_array_equal(got["target_used"], want["target_used"])
    for key in ("logits", "activations", "gradients"):
        assert got[key].shape == want[key].shape, (key, got[key].shape, want[key].shape)
        err = relative_error(got[key], want[key])
        assert err <= tolerance, f"{key}: relative max error {err:.2e} > {tolerance:.0e}"
