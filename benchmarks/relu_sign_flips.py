"""A gradient check that forgives ReLU sign flips and max-pool ties from float32 rounding, and nothing else.

A ReLU whose input lies within float32 rounding of zero can fall on one side in ONNX Runtime's float32 forward and
on the other in torch's: the whole gradient path through that unit is then switched on in one and off in the other,
and a deep network (DenseNet's early targets) disagrees with torch autograd by ~5e-3 although every gradient rule is
right; a max-pool window whose two largest elements are within rounding sends the gradient to a different element
(GoogLeNet). This check recomputes torch autograd in float64 with each ReLU's on/off pattern and each max pooling's
picks taken from the explain graph's own float32 forward (matched call by call on the values), and compares the
explain graph's gradients with that.

It stays a real check: the gradients still come from torch autograd (only the ReLU masks and max-pool picks are
borrowed, never a gradient), a flip is forgiven only at a unit whose float64 input is within `NEAR_ZERO` of the
tensor's largest magnitude, and a tie only where ONNX's pick is within `NEAR_ZERO` of float64's maximum (float32
rounding, not a wrong forward), and a wrong gradient rule still shows as a large error.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NEAR_ZERO = 1e-5  # a flip is forgiven at |x| <= NEAR_ZERO * max|x| of its tensor (~80 float32 ulps of its scale)
MATCH = 1e-3  # a torch ReLU input matches an ONNX one when they agree to MATCH * max|x|


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (the coverage table's measure)."""
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))


def autograd_reference(model, path: str, images: np.ndarray, targets, dtype=None, mode=None):
    """(logits, the module's first tensor, d(sum of the chosen logits)/d(that tensor)) by torch autograd.

    `targets` < 0 means the arg-max; `dtype` (e.g. torch.float64) runs a converted copy; `mode` is a context
    manager active during the forward (OnnxReluPattern.mode())."""
    import torch

    from fusioncam.export.module_outputs import model_logits, pick_tensor

    if dtype is not None:
        model = model.to(dtype)
    module = dict(model.named_modules())[path]
    captured = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(pick_tensor(out, None, path)))
    x = torch.from_numpy(images)
    try:
        with torch.enable_grad(), mode or nullcontext():
            logits = model_logits(model(x if dtype is None else x.to(dtype)), None)
    finally:
        handle.remove()
    used = np.where(np.asarray(targets) < 0, logits.argmax(1).detach().numpy(), targets)
    score = logits[torch.arange(len(used)), torch.from_numpy(used)].sum()
    (grads,) = torch.autograd.grad(score, captured[-1])
    return logits.detach().numpy(), captured[-1].detach().numpy(), grads.numpy()


def explain_with_relu_inputs(explain_path: Path, images: np.ndarray, targets: np.ndarray) -> tuple[dict, list, list]:
    """One run of the explain graph returning its outputs, the float32 input of every Relu node in it and the
    Indices of every MaxPool whose gradient it computes (flat positions in the whole input tensor)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    proto = onnx.load(str(explain_path))
    relu_inputs = list(dict.fromkeys(node.input[0] for node in proto.graph.node if node.op_type == "Relu"))
    pool_indices = [node.output[1] for node in proto.graph.node
                    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]
                    and not any(a.name == "storage_order" and a.i for a in node.attribute)]
    proto.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in relu_inputs)
    proto.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.INT64, None) for name in pool_indices)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    values = dict(zip(names, session.run(names, {"input": images, "target": targets})))
    return values, [values[name] for name in relu_inputs], [values[name] for name in pool_indices]


def _closest(candidates: list, free: list, distance) -> int | None:
    """The index in `free` whose candidate has the smallest distance (None: no candidate fits), taken off `free`."""
    best, best_distance = None, math.inf
    for index in free:
        found = distance(candidates[index])
        if found is not None and found < best_distance:
            best, best_distance = index, found
    if best is not None:
        free.remove(best)
    return best


@dataclass
class OnnxReluPattern:
    """A torch function mode (enter it around a float64 forward) that makes torch's kinks fall where the ONNX
    float32 forward's did: every ReLU call becomes `x` where the matching ONNX ReLU input is > 0 and 0 elsewhere,
    and every 2-D max pooling takes the elements ONNX's MaxPool picked (its Indices), so autograd's masks and
    argmaxes are ONNX's. It counts the units that differ: ReLU sign flips, and max-pool ties (windows where ONNX
    picked an element that is not float64's maximum)."""

    onnx_inputs: list
    onnx_pool_indices: list = field(default_factory=list)
    flips: int = 0
    far_flips: int = 0  # flips or ties not within rounding: a different forward, never forgiven
    pool_ties: int = 0
    unmatched: int = 0  # torch ReLU / pooling calls with no ONNX counterpart of the same values (left as torch's)
    _free: list = field(default_factory=list)
    _free_pools: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._free = list(range(len(self.onnx_inputs)))
        self._free_pools = list(range(len(self.onnx_pool_indices)))

    def _match(self, x: np.ndarray) -> np.ndarray | None:
        """The unused ONNX ReLU input closest to `x` (same shape, within MATCH), taken off the free list."""
        scale = max(float(np.abs(x).max()), 1e-30)

        def distance(candidate):
            if candidate.shape != x.shape:
                return None
            found = float(np.abs(candidate - x).max())
            return found if found <= MATCH * scale else None

        best = _closest(self.onnx_inputs, self._free, distance)
        return None if best is None else self.onnx_inputs[best]

    def masked_relu(self, x):
        """x where the ONNX forward's ReLU passed, 0 elsewhere (torch's own ReLU when nothing matches)."""
        import torch

        values = x.detach().cpu().numpy()
        onnx_input = self._match(values)
        if onnx_input is None:
            self.unmatched += 1
            return torch.relu(x)
        onnx_on, torch_on = onnx_input > 0, values > 0
        flipped = onnx_on != torch_on
        self.flips += int(flipped.sum())
        self.far_flips += int((np.abs(values[flipped]) > NEAR_ZERO * np.abs(values).max()).sum())
        return torch.where(torch.from_numpy(onnx_on).to(x.device), x, torch.zeros_like(x))

    def picked_max_pool(self, func, args, kwargs):
        """The elements ONNX's MaxPool picked, in place of torch's maxima (torch's own pooling when none matches)."""
        import torch

        pooled = func(*args, **kwargs)
        if not isinstance(pooled, torch.Tensor):  # return_indices=True: left as torch's
            return pooled
        x = args[0]
        flat, want = x.detach().cpu().numpy().reshape(-1), pooled.detach().cpu().numpy()
        scale = max(float(np.abs(flat).max()), 1e-30)

        def distance(indices):
            if indices.shape != want.shape or indices.min() < 0 or indices.max() >= flat.size:
                return None
            found = float(np.abs(flat[indices] - want).max())
            return found if found <= MATCH * scale else None

        best = _closest(self.onnx_pool_indices, self._free_pools, distance)
        if best is None:
            self.unmatched += 1
            return pooled
        indices = self.onnx_pool_indices[best]
        short = want - flat[indices]  # >= 0: how far below float64's maximum ONNX's pick is
        self.pool_ties += int((short > 0).sum())
        self.far_flips += int((short > NEAR_ZERO * scale).sum())
        return x.reshape(-1)[torch.from_numpy(indices.reshape(-1)).to(x.device)].reshape(pooled.shape)

    def mode(self):
        """The torch function mode itself (a context manager)."""
        import torch
        import torch.nn.functional as F
        from torch.overrides import TorchFunctionMode

        relus = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}
        pools = {F.max_pool2d, torch.max_pool2d}
        pattern = self

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if func in relus:
                    return pattern.masked_relu(args[0])
                if func in pools:
                    return pattern.picked_max_pool(func, args, kwargs or {})
                return func(*args, **(kwargs or {}))

        return Mode()


@dataclass(frozen=True)
class SignFlipCheck:
    """The explain graph's gradients against float64 autograd under the ONNX forward's ReLU and max-pool pattern."""

    relative_error: float  # explain graph vs float64 autograd with ONNX's ReLU masks and max-pool picks
    plain_float64_error: float  # explain graph vs float64 autograd with torch's own
    flips: int
    far_flips: int
    unmatched: int
    pool_ties: int = 0

    def passed(self, tolerance: float) -> bool:
        """Within `tolerance`, and every flip or tie within rounding."""
        return self.far_flips == 0 and self.relative_error <= tolerance

    def describe(self, float32_error: float) -> str:
        """The row's words: both numbers and what the flips were."""
        kinks = [f"{count} {what}{'s' if count > 1 else ''}" for count, what in
                 ((self.flips, "ReLU sign flip"), (self.pool_ties, "max-pool tie")) if count]
        if kinks:
            text = (f"float64 with ONNX ReLU pattern: {self.relative_error:.2g}; float32: {float32_error:.2g} "
                    f"from {' and '.join(kinks)}")
        else:  # the explain graph's pattern is float64's: the float32 torch reference is the one off
            text = (f"float64: {self.relative_error:.2g}, no ReLU sign flip from float64; float32 torch: "
                    f"{float32_error:.2g}, its own rounding")
        if self.far_flips:
            text += f" ({self.far_flips} of them not within rounding: a different forward)"
        if self.unmatched:
            text += f"; {self.unmatched} torch ReLU or pooling calls with no ONNX counterpart left as torch's"
        return text


def check_with_onnx_relu_pattern(model, path: str, explain_path: Path, images: np.ndarray, targets: np.ndarray,
                                 layout) -> SignFlipCheck:
    """Run the explain graph (gradients, ReLU inputs and max-pool picks from one run) and compare its gradients,
    rearranged by `layout`, with float64 torch autograd of `model` (in-place ops off) under the graph's pattern."""
    import torch

    from fusioncam.export.target_layout import rearrange
    from fusioncam.export.torch_targets import inference_copy

    values, relu_inputs, pool_indices = explain_with_relu_inputs(explain_path, images, targets)
    used = values["target_used"]
    pattern = OnnxReluPattern(relu_inputs, pool_indices)
    _logits, _acts, grads = autograd_reference(inference_copy(model), path, images, used, torch.float64, pattern.mode())
    _logits, _acts, plain = autograd_reference(inference_copy(model), path, images, used, torch.float64)
    got = values["gradients"]
    return SignFlipCheck(relative_error(got, rearrange(grads, layout)), relative_error(got, rearrange(plain, layout)),
                         pattern.flips, pattern.far_flips, pattern.unmatched, pattern.pool_ties)
