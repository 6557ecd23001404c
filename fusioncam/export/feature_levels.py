"""Target layers of a PyTorch detector that are one module's several outputs: a feature pyramid's levels.

A torchvision `FeaturePyramidNetwork` (and the `BackboneWithFPN` around it) returns an OrderedDict of maps, one per
level ('0', '1', '2', 'p6', 'p7' in RetinaNet; '0' ... '3', 'pool' in Faster R-CNN), and the detection head reads
every level. Named as a target, such a module stands for all of its 4-D outputs, each a target layer of one
several-layer bundle (export/several_layers_graph.py: one backward pass reaches every level; the runtime makes each
level's map and combines them, runtime/layer_aggregation.py). One level is named `path['key']` (a dict output) or
`path[i]` (a list or tuple output), e.g. "backbone.fpn['p6']"; a module returning one tensor is named by its path.

`level_selectors` finds what a target names by running the module once; `LevelsWrapper` returns the model's output
and each selected map, for the exporter (torch_export.export_features_wrapper).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import LayerError

_LEVEL = re.compile(r"^(?P<path>[^\[\]]+)\[(?P<key>'[^']*'|\"[^\"]*\"|\d+)\]$")


@dataclass(frozen=True)
class LevelSelector:
    """One target map: module `path`'s output, or its entry `key` (a dict key or a sequence index); `label` is how
    the bundle names it."""

    path: str
    key: str | int | None
    label: str

    def pick(self, output: Any):
        """This selector's map from the module's output."""
        return output if self.key is None else output[self.key]


def parse_target(target: str) -> tuple[str, str | int | None]:
    """("backbone.fpn", "p6") from "backbone.fpn['p6']", ("neck", 2) from "neck[2]", (path, None) from a path."""
    match = _LEVEL.match(target.strip())
    if match is None:
        return target, None
    key = match.group("key")
    return match.group("path"), (key[1:-1] if key[0] in "'\"" else int(key))


def target_list(target_layer) -> list[str] | None:
    """The targets a detector export names: None (the default), a path or level, or a non-empty list of them."""
    from .. import arguments

    if target_layer is None:
        return None
    if isinstance(target_layer, (list, tuple)):
        targets = arguments.string_list("target_layer", list(target_layer), allow_none=False)
        if not targets:
            raise LayerError("target_layer is an empty list; give a module path, several, or None (automatic)")
        return targets
    return [arguments.text("target_layer", target_layer)]


def _is_map(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor) and value.dim() == 4


def _entries(output: Any) -> list[tuple[str | int, Any]]:
    """(key, value) of a dict, list or tuple output; [] for anything else."""
    if isinstance(output, dict):
        return list(output.items())
    if isinstance(output, (list, tuple)):
        return list(enumerate(output))
    return []


def _label(path: str, key: str | int) -> str:
    return f"{path}['{key}']" if isinstance(key, str) else f"{path}[{key}]"


def level_selectors(net, prefix: str, targets: list[str], example, *,
                    keep: Callable[[str, str | int], bool] | None = None) -> tuple[list[LevelSelector], list[str]]:
    """The maps `targets` name (module paths of the user's model, `prefix` + path inside `net`), found by running
    `net` on `example` once: a module whose output is a 4-D map gives one selector; one whose output is a dict,
    list or tuple gives a selector per 4-D entry (a feature pyramid's levels), or the one entry its label names.
    `keep(path, key)` drops levels the detector's scores do not read (Faster R-CNN's 'pool'). Levels of 1x1 at the
    export's input size are left out of a module's levels (every CAM map there is constant) and returned as the
    second item, by label. LayerErrors name what a target outputs when it is not a map."""
    import torch

    from .torch_export import module_by_path

    parsed = [parse_target(target) for target in targets]
    captured: dict[str, list] = {path: [] for path, _ in parsed}
    hooks = [module_by_path(net, prefix + path).register_forward_hook(
        lambda _m, _i, out, path=path: captured[path].append(out)) for path in captured]
    try:
        with torch.no_grad():
            net(example)
    finally:
        for hook in hooks:
            hook.remove()
    selectors: list[LevelSelector] = []
    skipped: list[str] = []
    for target, (path, key) in zip(targets, parsed):
        if len(captured[path]) != 1:
            raise LayerError(f"target layer '{path}' runs {len(captured[path])} times in one forward; pick a module "
                             f"that runs exactly once")
        output = captured[path][0]
        entries = dict(_entries(output))
        if key is not None:
            if key not in entries or not _is_map(entries[key]):
                maps = [_label(path, k) for k, v in entries.items() if _is_map(v)]
                raise LayerError(f"target layer '{target}': module '{path}' has no 4-D output {key!r}"
                                 + (f"; its maps are {', '.join(maps)}" if maps else ""))
            selectors.append(LevelSelector(path, key, target))
        elif _is_map(output):
            selectors.append(LevelSelector(path, None, path))
        else:
            levels = [LevelSelector(path, k, _label(path, k)) for k, v in entries.items()
                      if _is_map(v) and (keep is None or keep(path, k))]
            single = [level for level in levels if level.pick(output).shape[2:].numel() == 1]
            if single and len(single) < len(levels):  # a 1x1 level's every map is constant: no place to point at
                skipped.extend(level.label for level in single)
                levels = [level for level in levels if level not in single]
            if not levels:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise LayerError(f"target layer '{path}' outputs {shape}, not a 4-D feature map [N, K, h, w] or "
                                 f"several (a feature pyramid's levels); pick one from fusioncam.list_layers(model)")
            selectors.extend(levels)
    labels = [selector.label for selector in selectors]
    if len(set(labels)) != len(labels):
        raise LayerError(f"target layers name the same map more than once ({', '.join(labels)}); give each once")
    return selectors, skipped


def with_skipped_levels(result, skipped: list[str]):
    """The ExportResult with a note naming the 1x1 levels left out (level_selectors), if any."""
    if not skipped:
        return result
    from dataclasses import replace

    note = (f"left out {', '.join(skipped)}: 1x1 at this input size, where every CAM map is constant; a larger "
            f"input size keeps them")
    return replace(result, notes=(*result.notes, note))


def resolve_levels(detector, selectors: list[LevelSelector]) -> list:
    """Each selector's Layer in the exported graph (features_output(i)); a LayerError about one names the user's
    label, not the exporter's tensor name."""
    from .layers import resolve_target
    from .torch_export import features_output

    layers = []
    for index, selector in enumerate(selectors):
        try:
            layers.append(resolve_target(detector, features_output(index)))
        except LayerError as error:
            raise LayerError(str(error).replace(f"'{features_output(index)}'", f"'{selector.label}'")) from None
    return layers


def LevelsWrapper(net, prefix: str, selectors: list[LevelSelector], scores: Callable):  # noqa: N802 (a factory)
    """A torch module: x -> (scores(net(x)), each selected map), the maps captured by forward hooks."""
    import torch

    from .torch_export import module_by_path

    paths = list(dict.fromkeys(selector.path for selector in selectors))

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = net
            self.captured: dict[str, list] = {path: [] for path in paths}
            for path in paths:
                module_by_path(net, prefix + path).register_forward_hook(
                    lambda _m, _i, out, path=path: self.captured[path].append(out))

        def forward(self, x):
            for captured in self.captured.values():
                captured.clear()
            head = scores(self.model(x))
            return (head, *(selector.pick(self.captured[selector.path][0]) for selector in selectors))

    return Wrapper().eval()


__all__ = ["LevelSelector", "LevelsWrapper", "level_selectors", "parse_target", "resolve_levels", "target_list",
           "with_skipped_levels"]
