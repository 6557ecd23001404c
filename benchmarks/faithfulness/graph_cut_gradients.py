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

check_kinks checks the same coordinates at one step taken from a measured rounding error and tells the coordinates
where S has a kink within the step (no derivative there; the gradient must equal a one-sided difference) from the
smooth ones (the central difference within tolerance); check_directions differentiates along whole directions.
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
    a = np.ascontiguousarray(activations, dtype=np.float32)
    scores_of = _cut_scores(model, image, layer, scores, a.shape)
    seed = seed.astype(np.float64)
    base = scores_of(a[None].reshape(1, -1))
    chosen = _checked_coordinates(gradients, top, samples, rng_seed)
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
    return GradientCheck(layer=layer, coordinates=len(chosen), largest=min(top, gradients.size),
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


def rounding_error(session_scores, a: np.ndarray, *, coordinates: int = 16, points: int = 17, step: float = 1e-5,
                   rng_seed: int = 1) -> float:
    """A measured estimate of the float32 rounding error of `S`: along `coordinates` random coordinate axes `S` is
    evaluated at `points` steps of `step * max |A|` around `A` (far too small a range to bend at a kink in all but
    rare cases) and a line is fitted by least squares; the largest residual is the estimate. `session_scores` maps
    rows [n, K*h*w] to S [n]."""
    rng = np.random.default_rng(rng_seed)
    offsets = np.arange(points) - points // 2
    h0 = step * float(np.abs(a).max())
    residuals = []
    for k in rng.choice(a.size, size=min(coordinates, a.size), replace=False):
        rows = np.repeat(a.reshape(1, -1), points, axis=0)
        rows[np.arange(points), k] += (offsets * h0).astype(np.float32)
        taken = rows[:, k].astype(np.float64) - a.ravel()[k]
        values = session_scores(rows)
        fit = np.polyfit(taken, values, 1)
        residuals.append(float(np.abs(values - np.polyval(fit, taken)).max()))
    return max(residuals)


@dataclass(frozen=True)
class KinkCheck:
    """The coordinate check at one step e chosen from the measured rounding error, kinks told apart from smooth points.

    Along each checked coordinate S is evaluated at 17 evenly spaced points of [x-e, x+e]. A smooth S is a parabola
    there up to rounding; where a quadratic fit leaves a residual above `kink_residual` times the measured rounding
    error, S has a kink (a ReLU, HardSwish or MaxPool switch downstream) within [x-e, x+e]: no derivative to
    check there. The in-graph gradient, like autograd, takes one side, so at a kink it is compared with the nearer
    of the one-sided differences f = (S(x+e) - S(x))/e and b = (S(x) - S(x-e))/e; that holds within tolerance
    where one side is free of kinks and fails where kinks lie on both sides. The smooth coordinates are compared
    with the central difference at e. Errors are normalised as check_gradient's: by max |central difference|."""

    layer: str
    tolerance: float
    rounding_error: float  # measured, absolute, in S
    step: float  # e, absolute (chosen so that the rounding error of f and b is tolerance / 4 of the scale)
    step_fraction: float  # e / max |A|
    scale: float  # max_j |central_j| at e
    smooth: int
    smooth_max_relative_error: float  # max over smooth k of |g_k - fd_k| / scale
    smooth_median_relative_error: float
    kinks: int
    kink_one_sided_max_error: float  # max over kinks of min(|g - f|, |g - b|) / scale
    kinks_matching_one_side: int  # kinks where that is within tolerance

    def record(self) -> dict:
        return dict(self.__dict__)


def check_kinks(model: onnx.ModelProto, image: np.ndarray, layer: str, scores: str, activations: np.ndarray,
                gradients: np.ndarray, seed: np.ndarray, *, samples: int = 48, top: int = 16,
                tolerance: float = 1e-3, points: int = 8, kink_residual: float = 1.5, rng_seed: int = 0,
                batch: int = 16) -> KinkCheck:
    """The same coordinates as check_gradient (the `top` largest |g| and a random sample, same seed), checked at one
    step e from the measured rounding error delta of S (rounding_error): e = 8 delta / (tolerance * scale0), scale0
    the largest central difference at 1e-2 max |A| (the step never looks at the in-graph gradient), so a one-sided
    difference carries at most 2 delta / e = tolerance / 4 of the scale in rounding. See KinkCheck for the rest."""
    a = np.ascontiguousarray(activations, dtype=np.float32)
    scores_of = _cut_scores(model, image, layer, scores, a.shape)
    seed = seed.astype(np.float64)

    def values(rows: np.ndarray) -> np.ndarray:
        out = []
        for begin in range(0, len(rows), batch):
            part = rows[begin:begin + batch]
            out.append((scores_of(part) * seed[None]).reshape(len(part), -1).sum(axis=1))
        return np.concatenate(out)

    chosen = _checked_coordinates(gradients, top, samples, rng_seed)

    def scan(h: float, points: int) -> tuple[np.ndarray, np.ndarray]:
        """S along each chosen axis at `2 points + 1` evenly spaced offsets in [-h, h]: offsets taken [n, 2p+1]
        (the float32 steps actually taken) and values [n, 2p+1]."""
        offsets = (np.arange(-points, points + 1) * (h / points)).astype(np.float32)
        rows = np.repeat(a.reshape(1, -1), len(chosen) * len(offsets), axis=0)
        axis = np.repeat(chosen, len(offsets))
        rows[np.arange(len(rows)), axis] += np.tile(offsets, len(chosen))
        taken = rows[np.arange(len(rows)), axis].astype(np.float64) - a.ravel()[axis]
        return taken.reshape(len(chosen), -1), values(rows).reshape(len(chosen), -1)

    delta = rounding_error(values, a)
    taken, along = scan(1e-2 * float(np.abs(a).max()), 1)
    scale0 = float(np.abs((along[:, 2] - along[:, 0]) / (taken[:, 2] - taken[:, 0])).max())
    e = 8 * delta / (tolerance * max(scale0, 1e-30))
    taken, along = scan(e, points)
    mid = points
    forward = (along[:, -1] - along[:, mid]) / taken[:, -1]
    backward = (along[:, mid] - along[:, 0]) / -taken[:, 0]
    central = (along[:, -1] - along[:, 0]) / (taken[:, -1] - taken[:, 0])
    residual = np.array([np.abs(v - np.polyval(np.polyfit(t, v, 2), t)).max() for t, v in zip(taken, along)])
    scale = max(float(np.abs(central).max()), 1e-30)
    g = gradients.ravel()[chosen].astype(np.float64)
    kink = residual > kink_residual * delta
    smooth_errors = np.abs(g - central)[~kink] / scale
    one_sided = np.minimum(np.abs(g - forward), np.abs(g - backward))[kink] / scale
    return KinkCheck(layer=layer, tolerance=tolerance, rounding_error=delta, step=e,
                     step_fraction=e / float(np.abs(a).max()), scale=scale, smooth=int((~kink).sum()),
                     smooth_max_relative_error=float(smooth_errors.max()) if smooth_errors.size else 0.0,
                     smooth_median_relative_error=float(np.median(smooth_errors)) if smooth_errors.size else 0.0,
                     kinks=int(kink.sum()), kink_one_sided_max_error=float(one_sided.max()) if one_sided.size else 0.0,
                     kinks_matching_one_side=int((one_sided <= tolerance).sum()))


__all__ = ["STEPS", "GradientCheck", "KinkCheck", "check_directions", "check_gradient", "check_kinks", "cut_after",
           "rounding_error"]


def _cut_scores(model, image: np.ndarray, layer: str, scores: str, shape: tuple[int, ...]):
    """scores_of(rows [n, K*h*w]) -> float64 scores [n, ...]: the shipped graph cut after `layer`, run in ONNX
    Runtime on rows of target-layer activations of `shape` (the image fed beside them, as the cut graph takes it)."""
    sub = cut_after(model, image.shape[1:], layer, scores)
    session = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    image_name, name = sub.graph.input[0].name, sub.graph.input[1].name

    def scores_of(rows: np.ndarray) -> np.ndarray:
        images = np.repeat(image[None].astype(np.float32), len(rows), axis=0)
        return session.run(None, {image_name: images, name: rows.reshape(len(rows), *shape)})[0].astype(np.float64)

    return scores_of


def _checked_coordinates(gradients: np.ndarray, top: int, samples: int, rng_seed: int) -> np.ndarray:
    """Flat indices: the `top` largest |gradient| coordinates, then `samples` others drawn with `rng_seed`."""
    rng = np.random.default_rng(rng_seed)
    flat = np.abs(gradients).ravel()
    largest = np.argsort(flat)[::-1][:top]
    others = np.setdiff1d(np.arange(flat.size), largest)
    return np.concatenate([largest, rng.choice(others, size=min(samples, others.size), replace=False)])
