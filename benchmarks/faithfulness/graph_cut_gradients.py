"""A bundle's in-graph gradient against central finite differences of the shipped graph's part after the target layer.

The shipped `.onnx` file is cut at the target tensor (`cut_after`: the target becomes an input, and
`onnx.utils.Extractor` keeps what the output needs from it): the subgraph from the target layer's activations `A`
to the tensor fusioncam differentiates (the classifier's pre-softmax logits, the binary map's pre-sigmoid logit).
For a scalar target `S(A) = sum(seed * scores(A))` (a class logit: a one-hot seed; `sum_ij w_ij y(i, j)` over a
fixed region `w`) and a coordinate `k` of `A`:

    fd_k = (S(A + h e_k) - S(A - h e_k)) / (2 h),   h = step * max |A|

taken pixel by pixel before summing (pixels the perturbation cannot reach cancel exactly), in ONNX Runtime on the
CPU with the shipped float32 graph as it is (its CPU provider has no float64 Conv or ConvTranspose kernel).
One step cannot serve every coordinate in float32: too small a one drowns in rounding, too large a one crosses a
ReLU, HardSwish or MaxPool kink downstream (a MaxPool window's runner-up overtaking its maximum). So each coordinate
takes, from `STEPS` (fractions of max |A|), the step whose one-sided differences `(S(A + h e_k) - S(A)) / h` and
`(S(A) - S(A - h e_k)) / h` agree best: a step that crosses a kink or drowns in rounding makes them disagree. The
choice never looks at the in-graph gradient. (ONNX's float64 reference evaluator is no way out: on the orientation
classifier it computes logits 30% away from ONNX Runtime's.)

Coordinates: the `top` of largest |gradient| plus a random sample of the others. Relative error of coordinate k:
`|g_k - fd_k| / max_j |fd_j|` over the checked coordinates (normalised by the gradient's scale, as the project's
`relative_error` does, so a coordinate whose gradient is ~0 is not divided by ~0); the largest-gradient coordinates
are also given their own `|g_k - fd_k| / |fd_k|`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx.utils import Extractor

STEPS = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4)  # the candidate h, as fractions of max |A|


def cut_after(model: onnx.ModelProto, input_size: tuple[int, int], start: str, end: str) -> onnx.ModelProto:
    """The part of `model` from tensor `start` to tensor `end`: `start` becomes a graph input (the node that made it
    writes to another name) and `onnx.utils.Extractor` keeps what `end` needs from it. The image input stays an
    input, for the nodes that read only its shape or the shape of a tensor before `start` (PaddlePaddle's flatten
    reads the batch size that way); the image's H, W are fixed first so shape inference types `start`."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    image = model.graph.input[0]
    for dim, value in zip(image.type.tensor_type.shape.dim[2:], input_size):
        dim.ClearField("dim_param")
        dim.dim_value = value
    model = onnx.shape_inference.infer_shapes(model)
    infos = {info.name: info for info in [*model.graph.value_info, *model.graph.output]}
    if start not in infos:
        raise ValueError(f"shape inference gives no type for {start!r}; it cannot be cut there")
    for node in model.graph.node:
        node.output[:] = [f"{start}/shipped" if out == start else out for out in node.output]
    model.graph.input.append(infos[start])
    return Extractor(model).extract_model([image.name, start], [end])


@dataclass(frozen=True)
class GradientCheck:
    """The finite-difference check of one target layer: how it ran, how many coordinates, and the errors."""

    layer: str
    coordinates: int  # how many coordinates were checked
    largest: int  # how many of them are the largest-|g| ones
    max_relative_error: float  # max_k |g_k - fd_k| / max_j |fd_j|
    median_relative_error: float
    largest_own_relative_error: float  # max over the largest-|g| coordinates of |g_k - fd_k| / |fd_k|
    gradient_scale: float  # max_j |fd_j|
    steps_taken: dict  # how many coordinates took each step (h / max |A|)

    def record(self) -> dict:
        return dict(self.__dict__)


def check_gradient(model: onnx.ModelProto, image: np.ndarray, layer: str, scores: str,
                   activations: np.ndarray, gradients: np.ndarray, seed: np.ndarray, *, samples: int = 48,
                   top: int = 16, steps: tuple[float, ...] = STEPS, rng_seed: int = 0, batch: int = 16,
                   selection: str = "stable") -> GradientCheck:
    """Check `gradients` [K, h, w] of `S(A) = sum(seed * scores(A))` (one image; `seed` broadcasts against the
    scores, e.g. a one-hot class [C] or region weights [1, H', W']) at `activations` [K, h, w] of the preprocessed
    `image` [3, H, W] against central differences of the shipped graph cut from `layer` to `scores`."""
    sub = cut_after(model, image.shape[1:], layer, scores)
    session = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    image_name, name = sub.graph.input[0].name, sub.graph.input[1].name
    a = np.ascontiguousarray(activations, dtype=np.float32)
    seed = seed.astype(np.float64)

    def scores_of(rows: np.ndarray) -> np.ndarray:
        images = np.repeat(image[None].astype(np.float32), len(rows), axis=0)
        return session.run(None, {image_name: images, name: rows.reshape(len(rows), *a.shape)})[0].astype(np.float64)

    base = scores_of(a[None].reshape(1, -1))
    rng = np.random.default_rng(rng_seed)
    flat = np.abs(gradients).ravel()
    largest = np.argsort(flat)[::-1][:top]
    others = np.setdiff1d(np.arange(flat.size), largest)
    chosen = np.concatenate([largest, rng.choice(others, size=min(samples, others.size), replace=False)])
    central = np.empty((len(steps), len(chosen)))
    disagreement = np.empty((len(steps), len(chosen)))
    for s, step in enumerate(steps):
        h = np.float32(step * float(np.abs(a).max()))
        for begin in range(0, len(chosen), batch):
            part = chosen[begin:begin + batch]
            rows = np.arange(len(part))
            plus = np.repeat(a[None], len(part), axis=0).reshape(len(part), -1)
            minus = plus.copy()
            plus[rows, part] += h
            minus[rows, part] -= h
            h_up = plus[rows, part].astype(np.float64) - a.ravel()[part]  # the float32 steps actually taken
            h_down = a.ravel()[part].astype(np.float64) - minus[rows, part]
            up = ((scores_of(plus) - base) * seed[None]).reshape(len(part), -1).sum(axis=1)  # pixel by pixel
            down = ((base - scores_of(minus)) * seed[None]).reshape(len(part), -1).sum(axis=1)
            central[s, begin:begin + len(part)] = (up + down) / (h_up + h_down)
            disagreement[s, begin:begin + len(part)] = np.abs(up / h_up - down / h_down)
    if selection == "stable":  # the step whose central difference moves least when the step shrinks
        change = np.abs(np.diff(central, axis=0))
        picked = change.argmin(axis=0)
    else:
        picked = disagreement.argmin(axis=0)
    fd = central[picked, np.arange(len(chosen))]
    g = gradients.ravel()[chosen].astype(np.float64)
    gradient_scale = float(np.abs(fd).max())
    errors = np.abs(g - fd) / max(gradient_scale, 1e-30)
    own = np.abs(g[:top] - fd[:top]) / np.maximum(np.abs(fd[:top]), 1e-30)
    return GradientCheck(layer=layer, coordinates=len(chosen), largest=len(largest),
                         max_relative_error=float(errors.max()), median_relative_error=float(np.median(errors)),
                         largest_own_relative_error=float(own.max()), gradient_scale=gradient_scale,
                         steps_taken={f"{step:g}": int((picked == s).sum()) for s, step in enumerate(steps)})


def check_directions(model: onnx.ModelProto, image: np.ndarray, layer: str, scores: str, activations: np.ndarray,
                     gradients: np.ndarray, seed: np.ndarray, *, random_directions: int = 4,
                     steps: tuple[float, ...] = STEPS, rng_seed: int = 0) -> dict:
    """Directional derivatives: the central difference of S along unit directions v (the gradient's own direction,
    then random Gaussian ones), `(S(A + t v) - S(A - t v)) / 2t` with `t = step * max |A|` chosen as in
    check_gradient, against `g . v`; error `|g . v - fd_v| / |g|` (for v = g / |g| that is `|1 - fd_v / |g||`).
    Every coordinate moves at once, so the difference is far above float32 rounding; kinks crossed on the way
    weigh in proportion to how few of them there are."""
    sub = cut_after(model, image.shape[1:], layer, scores)
    session = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    image_name, name = sub.graph.input[0].name, sub.graph.input[1].name
    a = activations.astype(np.float64)
    g = gradients.astype(np.float64).ravel()
    rng = np.random.default_rng(rng_seed)
    directions = [g / np.linalg.norm(g)] + [v / np.linalg.norm(v) for v in rng.standard_normal((random_directions, g.size))]
    seed = seed.astype(np.float64)
    scale = float(np.abs(a).max())
    fds = np.empty((len(steps), len(directions)))
    for s, step in enumerate(steps):
        t = step * scale
        for d, v in enumerate(directions):
            plus = (a.ravel() + t * v).astype(np.float32).reshape(1, *a.shape)
            minus = (a.ravel() - t * v).astype(np.float32).reshape(1, *a.shape)
            both = np.concatenate([plus, minus])
            out = session.run(None, {image_name: np.repeat(image[None].astype(np.float32), 2, axis=0), name: both})[0]
            taken = (plus.astype(np.float64) - minus).ravel() @ v  # the float32 displacement along v
            fds[s, d] = float(((out[0].astype(np.float64) - out[1]) * seed).sum()) / taken
    picked = np.abs(np.diff(fds, axis=0)).argmin(axis=0)
    fd = fds[picked, np.arange(len(directions))]
    exact = np.array([g @ v for v in directions])
    errors = np.abs(exact - fd) / np.linalg.norm(g)
    return {"layer": layer, "directions": len(directions), "gradient_direction_error": float(errors[0]),
            "random_direction_max_error": float(errors[1:].max()) if len(errors) > 1 else None,
            "steps_taken": [float(steps[i]) for i in picked]}


__all__ = ["STEPS", "GradientCheck", "check_directions", "check_gradient", "cut_after"]
