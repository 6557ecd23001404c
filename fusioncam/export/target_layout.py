"""How a target tensor becomes a [N, K, h, w] map: as it is (NCHW), channels-last [N, h, w, C], or tokens [N, T, C].

Vision transformers emit tokens: k prefix tokens (class, distillation, register) followed by an h x w grid of patch
tokens; Swin and other channels-last models emit [N, h, w, C]. The explain graph rearranges the target tensor and its
gradient with the same nodes (slice off the prefix tokens, reshape, transpose): a rearrangement, so the gradient of
the map is exactly the rearranged gradient of the tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import LayerError

NCHW, NHWC, TOKENS, GATHERED = "nchw", "nhwc", "tokens", "gathered"
MAX_PREFIX_TOKENS = 8  # class + distillation + up to 6 registers (DINOv2 and timm's reg4 models have 5)


@dataclass(frozen=True)
class TargetLayout:
    """The rearrangement of a target tensor into a map; `detected` says whether fusioncam inferred it."""

    kind: str = NCHW
    grid: tuple[int, int] | None = None  # (h, w) of the patch-token grid (TOKENS only)
    prefix_tokens: int = 0  # tokens before the grid, dropped (TOKENS only)
    detected: bool = True
    indices: np.ndarray | None = field(default=None, compare=False)  # GATHERED: [K,h,w] flat per-image positions

    def map_shape(self, source_shape: tuple) -> tuple:
        """(N, K, h, w) of the map made from a tensor of `source_shape`."""
        if self.kind == NCHW:
            return tuple(source_shape)
        if self.kind == NHWC:
            n, h, w, c = source_shape
            return (n, c, h, w)
        if self.kind == GATHERED:
            return (source_shape[0], *self.indices.shape)
        n, _tokens, c = source_shape
        return (n, c, *self.grid)

    def describe(self) -> str:
        """A short phrase for messages and manifests, e.g. 'tokens: 1 prefix + 14x14 grid'."""
        how = "detected" if self.detected else "as given"
        if self.kind == NCHW:
            return f"channels-first map [N,K,h,w] ({how})"
        if self.kind == NHWC:
            return f"channels-last map [N,h,w,C], transposed to [N,C,h,w] ({how})"
        if self.kind == GATHERED:
            return f"rearranged by the given reshape function into [N,{','.join(map(str, self.indices.shape))}]"
        h, w = self.grid
        return (f"tokens [N,T,C]: {self.prefix_tokens} prefix token(s) dropped + {h}x{w} patch grid, "
                f"reshaped to [N,C,h,w] ({how})")


@dataclass(frozen=True)
class LayoutRequest:
    """What the user said about the target's layout (None: let detection decide)."""

    token_grid: tuple[int, int] | None = None
    prefix_tokens: int | None = None
    channels_last: bool | None = None

    def given(self) -> bool:
        return self.token_grid is not None or self.prefix_tokens is not None or self.channels_last is not None

    @classmethod
    def checked(cls, token_grid, prefix_tokens, channels_last) -> "LayoutRequest":
        """The request from public arguments, each checked (an InputError names a wrong type or value)."""
        from .. import arguments

        return cls(arguments.size_pair("token_grid", token_grid, allow_none=True),
                   arguments.integer("prefix_tokens", prefix_tokens, minimum=0, allow_none=True),
                   None if channels_last is None else arguments.flag("channels_last", channels_last))


def _grid_fits(h: int, w: int, input_size: tuple[int, int]) -> bool:
    """True when an h x w grid is what a square stride (patch size) makes of the input, exactly or rounded."""
    height, width = input_size
    if h < 1 or w < 1 or h > height or w > width:
        return False
    for stride in range(1, max(height, width) + 1):
        for rounding in (math.ceil, math.floor):
            if rounding(height / stride) == h and rounding(width / stride) == w:
                return True
    return False


def token_grids(tokens: int, input_size: tuple[int, int], max_prefix: int = MAX_PREFIX_TOKENS) -> list[tuple[int, int, int]]:
    """Every (prefix, h, w) with prefix + h*w = tokens whose grid fits the input's aspect, fewest prefix tokens first."""
    found = []
    for prefix in range(0, min(max_prefix, tokens - 1) + 1):
        count = tokens - prefix
        for h in range(1, count + 1):
            if count % h == 0 and _grid_fits(h, count // h, input_size):
                found.append((prefix, h, count // h))
    return found


def gathered_layout(reshape, source_shape: tuple, name: str = "target") -> TargetLayout:
    """The layout a user's reshape function (tokens -> [N,K,h,w], as pytorch-grad-cam's reshape_transform) makes,
    recorded as the source position of every map element; the function must only rearrange (slice, reshape,
    permute): it is checked on random values, and anything else is a LayerError."""
    import torch

    per_image = tuple(int(d) for d in source_shape[1:])
    count = int(np.prod(per_image))
    positions = torch.arange(count, dtype=torch.float64).reshape(1, *per_image)
    values = torch.randn(2, *per_image, dtype=torch.float64)
    try:
        mapped = reshape(positions)
        mapped_values = reshape(values)
    except Exception as exc:  # noqa: BLE001  (the user's function: report what it did)
        raise LayerError(f"the reshape function failed on {name} of shape [N,{','.join(map(str, per_image))}]: "
                         f"{type(exc).__name__}: {exc}") from None
    if not isinstance(mapped, torch.Tensor) or mapped.dim() != 4 or mapped.shape[0] != 1:
        raise LayerError(f"the reshape function must return a [N,K,h,w] tensor for {name}; "
                         f"got {getattr(mapped, 'shape', type(mapped).__name__)}")
    indices = mapped[0].round().long().numpy()
    rearranges = (torch.equal(mapped[0], mapped[0].round()) and indices.min() >= 0 and indices.max() < count
                  and tuple(mapped_values.shape) == (2, *indices.shape)
                  and torch.equal(mapped_values, values.reshape(2, -1)[:, torch.from_numpy(indices)]))
    if not rearranges:
        raise LayerError("the reshape function must only rearrange the tensor (slice, reshape, permute, per image); "
                         "it computes something else, so its gradient is not the rearranged gradient")
    return TargetLayout(GATHERED, detected=False, indices=indices)


def _static(shape: tuple) -> bool:
    return all(isinstance(d, int) and d > 0 for d in shape[1:])


def detect_layout(
    shape: tuple,
    input_size: tuple[int, int],
    request: LayoutRequest = LayoutRequest(),
    name: str = "target",
) -> TargetLayout | None:
    """The layout of a tensor of `shape` (batch first) for a model fed `input_size` images, or None when it is not a map.

    Explicit arguments decide; otherwise a 3-D tensor whose tokens are k <= 8 prefix tokens plus a grid matching the
    input's aspect is TOKENS (fewest prefix tokens first), and a 4-D tensor is NCHW unless only its middle two dims
    make a grid that fits the input (then NHWC). A contradiction between the arguments and the shape is a LayerError."""
    token_grid, prefix_tokens, channels_last = request.token_grid, request.prefix_tokens, request.channels_last
    if shape is None or not _static(shape) or len(shape) not in (3, 4) or (len(shape) == 3 and shape[2] < 2):
        if token_grid is not None or prefix_tokens is not None or channels_last:
            raise LayerError(f"{name} has shape {shape}; a token layout needs a static [N,T,C] tensor and "
                             f"channels_last a static [N,h,w,C] tensor")
        return None
    if len(shape) == 4:
        if token_grid is not None or prefix_tokens is not None:
            raise LayerError(f"{name} is a 4-D tensor {tuple(shape)}: token_grid/prefix_tokens apply to token "
                             f"tensors [N,T,C]; for a channels-last map pass channels_last=True")
        if channels_last is not None:
            return TargetLayout(NHWC if channels_last else NCHW, detected=False)
        _, a, b, c = shape
        if c > 1 and not _grid_fits(b, c, input_size) and _grid_fits(a, b, input_size):
            return TargetLayout(NHWC)
        return TargetLayout(NCHW)
    if channels_last:
        raise LayerError(f"{name} is a 3-D tensor {tuple(shape)}: channels_last applies to [N,h,w,C] maps; "
                         f"for tokens pass token_grid=(h, w) and/or prefix_tokens=k")
    tokens = shape[1]
    if token_grid is not None:
        h, w = (int(v) for v in token_grid)
        prefix = tokens - h * w if prefix_tokens is None else int(prefix_tokens)
        if prefix < 0 or prefix + h * w != tokens:
            raise LayerError(f"{name} has {tokens} tokens; token_grid={h}x{w} with prefix_tokens={prefix} accounts "
                             f"for {prefix + h * w}. Give a grid and prefix whose sum is {tokens}.")
        return TargetLayout(TOKENS, (h, w), prefix, detected=False)
    options = token_grids(tokens, input_size)
    if prefix_tokens is not None:
        options = [o for o in options if o[0] == int(prefix_tokens)]
        if not options:
            raise LayerError(f"{name} has {tokens} tokens: {tokens} - {prefix_tokens} prefix tokens is no grid that "
                             f"fits a {input_size[0]}x{input_size[1]} input; pass token_grid=(h, w) as well")
        prefix, h, w = options[0]
        return TargetLayout(TOKENS, (h, w), prefix, detected=False)
    if not options:
        return None
    prefix, h, w = options[0]
    return TargetLayout(TOKENS, (h, w), prefix)


def layout_nodes(source: str, dest: str, layout: TargetLayout, source_shape: tuple,
                 prefix: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes (and their constants) computing `dest` = the [N,K,h,w] map of tensor `source`; names start with `prefix`."""
    if layout.kind == NCHW:
        return [helper.make_node("Identity", [source], [dest], name=f"{prefix}/identity")], []
    if layout.kind == NHWC:
        return [helper.make_node("Transpose", [source], [dest], perm=[0, 3, 1, 2], name=f"{prefix}/to_nchw")], []
    if layout.kind == GATHERED:
        constants = [numpy_helper.from_array(np.array([0, -1], np.int64), f"{prefix}/flat_shape"),
                     numpy_helper.from_array(layout.indices.astype(np.int64), f"{prefix}/indices")]
        nodes = [helper.make_node("Reshape", [source, f"{prefix}/flat_shape"], [f"{prefix}/flat"], name=f"{prefix}/flatten"),
                 helper.make_node("Gather", [f"{prefix}/flat", f"{prefix}/indices"], [dest], axis=1,
                                  name=f"{prefix}/gather")]
        return nodes, constants
    _, tokens, channels = source_shape
    h, w = layout.grid
    constants = [
        numpy_helper.from_array(np.array([layout.prefix_tokens], np.int64), f"{prefix}/starts"),
        numpy_helper.from_array(np.array([tokens], np.int64), f"{prefix}/ends"),
        numpy_helper.from_array(np.array([1], np.int64), f"{prefix}/axes"),
        numpy_helper.from_array(np.array([0, h, w, channels], np.int64), f"{prefix}/grid_shape"),
    ]
    nodes = [
        helper.make_node("Slice", [source, f"{prefix}/starts", f"{prefix}/ends", f"{prefix}/axes"],
                         [f"{prefix}/patches"], name=f"{prefix}/drop_prefix"),
        helper.make_node("Reshape", [f"{prefix}/patches", f"{prefix}/grid_shape"], [f"{prefix}/grid"],
                         name=f"{prefix}/to_grid"),
        helper.make_node("Transpose", [f"{prefix}/grid"], [dest], perm=[0, 3, 1, 2], name=f"{prefix}/to_nchw"),
    ]
    return nodes, constants


def rearrange(array: np.ndarray, layout: TargetLayout) -> np.ndarray:
    """The same rearrangement in NumPy (for checks and tests): [N,T,C] or [N,h,w,C] -> [N,K,h,w]."""
    if layout.kind == NCHW:
        return array
    if layout.kind == NHWC:
        return array.transpose(0, 3, 1, 2)
    if layout.kind == GATHERED:
        return array.reshape(array.shape[0], -1)[:, layout.indices]
    n, _tokens, channels = array.shape
    h, w = layout.grid
    return array[:, layout.prefix_tokens:].reshape(n, h, w, channels).transpose(0, 3, 1, 2)
