"""Query detectors (Hugging Face DETR, Conditional DETR, YOLOS, RT-DETR) as detection bundles.

A query detector returns `logits [N, Q, C(+1)]` and `pred_boxes [N, Q, 4]` (cx, cy, w, h normalised to the image).
`QueryDetectorOutputs` turns them into the "yolov8" layout of detection_graph.py, [N, 4 + C, Q], so each query is
one explained instance (its index is the bundle's "anchor") and the scorer's masked score is the best-matching
query's IoU x class score, as for the dense families. Boxes are scaled to input pixels; class scores are activated
as each model's own post-processing in transformers does:

- DETR and YOLOS: softmax over C + 1 classes, the last ("no object") column dropped (C classes remain);
- Conditional DETR: sigmoid of each of the C logits;
- RT-DETR: sigmoid (its config's `use_focal_loss`, the default), else softmax with the last column dropped.

Target layers are module paths of the transformers model (default: RT-DETR's hybrid-encoder levels, one bundle with
three target layers, encoder_levels; the others' backbone's last stage). A 4-D module output is used as it is (a backbone stage, RT-DETR's hybrid-encoder levels `model.encoder.fpn_blocks.<last>` and
`model.encoder.pan_blocks.<i>`, its decoder's input projections); a token sequence [N, h*w, d] from a
DETR/Conditional DETR encoder is reshaped to the [N, d, h, w] grid of the map that feeds it
(`model.input_projection`), in the explain graph, by the token layout ViTs use (target_layout.py). YOLOS' tokens
(class and detection tokens mixed with patches) are not reshaped: give a 4-D module for YOLOS (e.g. its patch
embedding's projection).
RT-DETR detaches its reference points and initial queries (the top-k encoder tokens' boxes and features), training-
time stop-gradients an ONNX graph does not record, so fusioncam's gradient is the score's full derivative: the
derivative of the function the model computes, which its finite differences give; the tests compare it with torch
autograd of the model with those detaches undone, at the backbone's last stage and the hybrid encoder's three
outputs (RT-DETR v2: the backbone's last stage). (That reference hands each BatchNorm2d a contiguous copy of its
incoming gradient: for a one-image batch, PyTorch's CPU backward of an eval BatchNorm2d permutes the gradient
RT-DETR's `flatten(2).transpose(1, 2)` after its decoder input projections hands it, which made autograd at the
encoder and backbone wrong, not fusioncam; see tests/export/test_detection_queries.py.)
The image processor is not part of the graph: images are the export's input size, normalised with mean/std
(default: ImageNet for DETR, Conditional DETR and YOLOS, 0 and 1 for RT-DETR, as their processors do).
"""

from __future__ import annotations

import os

from ..bundle import check_bundle_destination
from ..errors import LayerError, ModelLoadError
from .feature_levels import target_list

QUERY_DETECTORS = {"DetrForObjectDetection": "DETR", "ConditionalDetrForObjectDetection": "Conditional DETR",
                   "YolosForObjectDetection": "YOLOS", "RTDetrForObjectDetection": "RT-DETR",
                   "RTDetrV2ForObjectDetection": "RT-DETR"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PICKING_RULE = ("RT-DETR: its hybrid encoder's levels (model.encoder: each level's map made and the maps combined); "
                "the others: the backbone's last stage (a module path ending in 'stages.<last>' under its backbone)")
RT_DETR_LEVELS = {"RT-DETR": "; RT-DETR's hybrid encoder returns one map per level: give model.encoder for all of "
                             "them, or one level's module, model.encoder.fpn_blocks.<last> (finest), "
                             "model.encoder.pan_blocks.<i>"}


def query_kind(model) -> str | None:
    """"DETR", "Conditional DETR", "YOLOS" or "RT-DETR" for those transformers detectors, else None."""
    if not type(model).__module__.startswith("transformers."):
        return None
    return QUERY_DETECTORS.get(type(model).__name__)


def _drops_no_object(model, kind: str) -> bool:
    """True where the model's post-processing is a softmax over C + 1 with the no-object column dropped."""
    if kind in ("DETR", "YOLOS"):
        return True
    if kind == "RT-DETR":
        return not getattr(model.config, "use_focal_loss", True)
    return False


def QueryDetectorOutputs(model, input_size: tuple[int, int]):  # noqa: N802 (a module factory)
    """A module: images [N, 3, H, W] (normalised) -> [N, 4 + C, Q]: each query's box cx, cy, w, h in input pixels
    and its activated class scores (see the module docstring), from a transformers query detector in eval mode."""
    import torch

    kind = query_kind(model)
    softmax = _drops_no_object(model, kind)
    height, width = input_size

    class Outputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("scale", torch.tensor([width, height, width, height], dtype=torch.float32))

        def forward(self, x):
            out = self.model(pixel_values=x)
            logits, boxes = out.logits, out.pred_boxes
            scores = torch.softmax(logits, dim=-1)[..., :-1] if softmax else torch.sigmoid(logits)
            return torch.cat([boxes * self.scale, scores], dim=-1).transpose(1, 2)

    return Outputs()


def encoder_levels(model) -> list[str]:
    """The modules whose outputs are RT-DETR's hybrid-encoder levels, finest first: the last top-down block
    (`model.encoder.fpn_blocks.<last>`), then each bottom-up block (`model.encoder.pan_blocks.<i>`); [] for a model
    without them."""
    modules = dict(model.named_modules())

    def blocks(name: str) -> list[str]:
        return [path for path in modules if path.startswith(f"model.encoder.{name}.") and path.count(".") == 3]

    top_down, bottom_up = blocks("fpn_blocks"), blocks("pan_blocks")
    return [top_down[-1], *bottom_up] if top_down and bottom_up else []


def _default_target(model) -> str | None:
    """RT-DETR: its hybrid encoder (`model.encoder`, standing for its levels, encoder_levels); the others: the last
    `...stages.<i>` module under the backbone (ResNet-style backbones of DETR and Conditional DETR)."""
    if encoder_levels(model):
        return "model.encoder"
    stages = [name for name, _ in model.named_modules()
              if "backbone" in name and name.rsplit(".", 2)[-2:-1] == ["stages"] and name.rsplit(".", 1)[-1].isdigit()]
    return stages[-1] if stages else None


def _token_grid(model, input_size: tuple[int, int]) -> tuple[int, int] | None:
    """(h, w) of the map a DETR-style encoder flattens into tokens (`model.input_projection`'s output), or None."""
    import torch

    projection = dict(model.named_modules()).get("model.input_projection")
    if projection is None:
        return None
    shapes = []
    handle = projection.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    try:
        with torch.no_grad():
            model(pixel_values=torch.zeros(1, 3, *input_size))
    finally:
        handle.remove()
    return shapes[0][2:] if shapes and len(shapes[0]) == 4 else None


def export_torch_query_detection(model, target_layer: str | list[str] | None, out: str | os.PathLike,
                                 input_size: tuple[int, int] = (128, 128), *, mean=None, std=None,
                                 class_names: list[str] | None = None, fp16_scorer: bool = False):
    """A detection bundle from a transformers DETR, Conditional DETR, YOLOS or RT-DETR (see the module docstring).
    `target_layer` is a module path of `model`, or several (a list of modules with 4-D maps; RT-DETR's
    `model.encoder` stands for its levels, encoder_levels; its default); the others' default: the backbone's last
    stage. Class names default to the config's id2label."""
    import torch

    from .detection_export import write_detection_bundle
    from .detection_graph import prepare_detector
    from .classifier_graph import tensor_shapes
    from .layers import resolve_target
    from .target_layout import LayoutRequest
    from .torch_export import FEATURES_OUTPUT, _inference_copy, export_features_wrapper, features_wrapper, state_sha256

    kind = query_kind(model)
    if kind is None:
        raise ModelLoadError(f"{type(model).__name__} is not a transformers query detector "
                             f"({', '.join(sorted(QUERY_DETECTORS))})")
    targets = target_list(target_layer)
    check_bundle_destination(out)
    copy = _inference_copy(model)
    input_size = tuple(int(v) for v in input_size)
    picked = targets is None
    if targets is None:
        default = _default_target(copy)
        if default is None:
            raise LayerError(f"{kind}: no backbone stage found; give target_layer (a module path of the model)")
        targets = [default]
    if targets == ["model.encoder"] and encoder_levels(copy):
        targets = encoder_levels(copy)
    if len(targets) > 1:
        return _export_levels(copy, model, targets, out, input_size, kind=kind, picked=picked, mean=mean, std=std,
                              class_names=class_names, fp16_scorer=fp16_scorer)
    target_layer = targets[0]
    if target_layer not in dict(copy.named_modules()):
        raise LayerError(f"{kind}: target layer '{target_layer}' is not a module of the model; give a module path "
                         f"(see fusioncam.list_layers(model))")
    grid = _token_grid(copy, input_size)
    mean, std, class_names = _preprocessing(copy, kind, mean, std, class_names)
    source = f"{type(model).__name__} (PyTorch)"

    def raw_output(output):
        return output

    def features(captured, _scores):
        feats = captured if isinstance(captured, torch.Tensor) else captured[0]
        tokens = isinstance(feats, torch.Tensor) and feats.dim() == 3 and grid is not None \
            and feats.shape[1] == grid[0] * grid[1]
        if not tokens and (not isinstance(feats, torch.Tensor) or feats.dim() != 4):
            shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
            levels = RT_DETR_LEVELS.get(kind, "")
            raise LayerError(f"{kind}: target layer '{target_layer}' outputs {shape}; give a module with a 4-D map "
                             f"[N, K, h, w] (a backbone stage) or, for DETR and Conditional DETR, the encoder "
                             f"(tokens [N, h*w, d] reshaped to the input projection's grid){levels}")
        return feats

    wrapper = features_wrapper(QueryDetectorOutputs(copy, input_size), f"model.{target_layer}", raw_output, features)
    example = torch.zeros(2, 3, *input_size)
    with torch.no_grad():
        wrapper(example)
    exported = export_features_wrapper(wrapper, example, "detector")
    detector = prepare_detector(exported, source, "yolov8", input_size)
    layer = resolve_target(detector, FEATURES_OUTPUT, LayoutRequest(token_grid=tuple(grid), prefix_tokens=0)
                           if grid is not None and len(tensor_shapes(detector.model)[FEATURES_OUTPUT]) == 3
                           else LayoutRequest())
    result = write_detection_bundle(
        detector, layer, out, target_label=target_layer, source=source, source_sha256=state_sha256(model),
        mean=mean, std=std, class_names=class_names, picked_automatically=picked, fp16_scorer=fp16_scorer,
        picking_rule=PICKING_RULE)
    return result


def _preprocessing(copy, kind: str, mean, std, class_names):
    """(mean, std, class names) with the model's defaults: RT-DETR's processor takes RGB / 255, the others
    ImageNet's normalisation; class names from the config's id2label."""
    if mean is None:
        mean = (0.0, 0.0, 0.0) if kind == "RT-DETR" else IMAGENET_MEAN
    if std is None:
        std = (1.0, 1.0, 1.0) if kind == "RT-DETR" else IMAGENET_STD
    if class_names is None:
        labels = getattr(copy.config, "id2label", None) or {}
        count = int(copy.config.num_labels)
        class_names = [str(labels.get(i, i)) for i in range(count)] if len(labels) == count else None
    return mean, std, class_names


def _export_levels(copy, model, targets: list[str], out, input_size: tuple[int, int], *, kind: str, picked: bool,
                   mean, std, class_names, fp16_scorer: bool):
    """Several target modules with 4-D maps (RT-DETR's encoder levels) in one bundle (feature_levels.py)."""
    import torch

    from .detection_export import write_detection_bundle
    from .detection_graph import prepare_detector
    from .feature_levels import LevelsWrapper, level_selectors, resolve_levels, with_skipped_levels
    from .torch_export import export_features_wrapper, state_sha256

    mean, std, class_names = _preprocessing(copy, kind, mean, std, class_names)
    net = QueryDetectorOutputs(copy, input_size)
    example = torch.zeros(2, 3, *input_size)
    selectors, skipped = level_selectors(net, "model.", targets, example)
    wrapper = LevelsWrapper(net, "model.", selectors, lambda output: output)
    exported = export_features_wrapper(wrapper, example, "detector", features=len(selectors))
    detector = prepare_detector(exported, f"{type(model).__name__} (PyTorch)", "yolov8", input_size)
    layers = resolve_levels(detector, selectors)
    result = write_detection_bundle(
        detector, layers, out, target_label=[selector.label for selector in selectors],
        source=f"{type(model).__name__} (PyTorch)", source_sha256=state_sha256(model), mean=mean, std=std,
        class_names=class_names, picked_automatically=picked, fp16_scorer=fp16_scorer, picking_rule=PICKING_RULE)
    return with_skipped_levels(result, skipped)


__all__ = ["QueryDetectorOutputs", "encoder_levels", "export_torch_query_detection", "query_kind"]
