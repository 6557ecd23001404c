"""`export_torch_segmentation` / `export_onnx_segmentation`: semantic segmentation models become bundles.

A PyTorch model may return the class scores as a tensor [N, C, H', W'], a dict with `out` (torchvision FCN,
DeepLabV3, LRASPP) or an object with `.logits` (Hugging Face SegFormer and its kin); an ONNX file's first output
must be those scores (or their softmax, whose input is then used).
"""

from __future__ import annotations

import os

from ..bundle import check_bundle_destination
from ..errors import LayerError, ModelLoadError
from ..images import IMAGENET_MEAN, IMAGENET_STD
from .bundle_builder import ExportResult
from .layers import resolve_target
from .channel_order import bundle_statistics, reverse_input_channels, with_bgr_note
from .onnx_loading import load_onnx
from .segmentation_bundle import write_segmentation_bundle
from .segmentation_graph import auto_segmentation_target, prepare_segmenter


def class_scores(output):
    """The per-pixel class scores inside a segmentation model's output (tensor, dict `out`, or `.logits`)."""
    import torch

    if isinstance(output, torch.Tensor):
        scores = output
    elif getattr(output, "logits", None) is not None:  # Hugging Face outputs are dicts too: look here first
        scores = output.logits
    elif isinstance(output, dict) and "out" in output:
        scores = output["out"]
    else:
        raise ModelLoadError(f"the segmentation model returns {type(output).__name__}; expected class scores "
                             f"[N, C, H', W'] as a tensor, a dict with 'out' or an object with '.logits'")
    if not isinstance(scores, torch.Tensor) or scores.dim() != 4:
        what = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ModelLoadError(f"the segmentation model's class scores are {what}; expected [N, C, H', W']")
    return scores


def _segmentation_wrapper(model, layer_path: str):
    """A module returning (class scores, target module output), the target captured by a forward hook."""
    import torch

    from .torch_export import features_wrapper

    def features(feats, _scores):
        if not isinstance(feats, torch.Tensor) or feats.dim() != 4:
            what = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
            raise LayerError(f"target layer '{layer_path}' outputs {what}; a CAM target must output a 4-D "
                             f"feature map [N,K,h,w]. Pick one from fusioncam.list_layers(model).")
        return feats

    return features_wrapper(model, layer_path, class_scores, features)


def _torch_to_onnx(model, layer_path: str, input_size: tuple[int, int]):
    """Export (class scores, target features) with the classifier path's exporters (TorchScript, then dynamo)."""
    import torch

    from .torch_export import _inference_copy, export_features_wrapper

    wrapper = _segmentation_wrapper(_inference_copy(model), layer_path)
    example = torch.zeros(2, 3, *input_size)
    with torch.no_grad():
        wrapper(example)  # raises the LayerError/ModelLoadError above with a clear message before exporting
    return export_features_wrapper(wrapper, example, "segmentation model")


def export_torch_segmentation(
    model,
    target_layer: str | None,
    out: str | os.PathLike,
    input_size: tuple[int, int] = (224, 224),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    class_names: list[str] | None = None,
    fp16_scorer: bool = False,
) -> ExportResult:
    """Export a PyTorch segmentation model with the module at `target_layer` (a dotted path) as the CAM target;
    None picks the last map with spatial size > 1 and a channel count other than the classes' whose positions reach
    the class scores (as export_onnx_segmentation picks: DeepLabV3's last ReLU map in its head).

    The bundle's explain graph takes a class and a region per image and differentiates the region score
    `S = sum over the region of the class-c scores`; its scorer returns the region probability (docs/segmentation.md)."""
    import torch

    from .torch_export import FEATURES_OUTPUT, state_sha256

    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"export_torch_segmentation needs a torch.nn.Module, got {type(model).__name__}")
    check_bundle_destination(out)  # before any work: never replace what fusioncam did not write
    source = f"{type(model).__name__} (PyTorch)"
    from .. import arguments
    from .torch_targets import auto_torch_target

    arguments.text("target_layer", target_layer, allow_none=True)
    picked = target_layer is None
    if picked:
        target_layer = auto_torch_target(model, tuple(input_size))
    exported = _torch_to_onnx(model, target_layer, tuple(input_size))
    segmenter = prepare_segmenter(exported, source, tuple(input_size))
    layer = resolve_target(segmenter, FEATURES_OUTPUT)
    return write_segmentation_bundle(
        segmenter, layer, out, target_label=target_layer, source=source, source_sha256=state_sha256(model),
        mean=mean, std=std, class_names=class_names, fp16_scorer=fp16_scorer, picked_automatically=picked,
    )


def export_onnx_segmentation(
    model_path: str | os.PathLike,
    out: str | os.PathLike,
    target_layer: str | None = None,
    *,
    input_size: tuple[int, int] | None = None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    class_names: list[str] | None = None,
    fp16_scorer: bool = False,
    bgr: bool = False,
) -> ExportResult:
    """Make a segmentation bundle from an `.onnx` model whose first output is class scores [N, C, H', W'];
    `target_layer` is a tensor name, None picks the last feature map before the per-pixel classifier. `bgr`: the
    model takes its channels in B, G, R order, mean/std given in that order; the bundle takes RGB
    (channel_order.py)."""
    check_bundle_destination(out, [model_path])  # before any work: never replace what fusioncam did not write
    source = load_onnx(model_path)
    model = reverse_input_channels(source.model, source.origin) if bgr else source.model
    if bgr:
        mean, std = bundle_statistics(mean, std, given_mean=mean is not IMAGENET_MEAN, given_std=std is not IMAGENET_STD)
    segmenter = prepare_segmenter(model, source.origin, input_size)
    layer = resolve_target(segmenter, target_layer) if target_layer is not None else auto_segmentation_target(segmenter)
    result = write_segmentation_bundle(
        segmenter, layer, out, target_label=layer.name, source=str(model_path), source_sha256=source.sha256,
        mean=mean, std=std, class_names=class_names, picked_automatically=target_layer is None,
        fp16_scorer=fp16_scorer,
    )
    return with_bgr_note(result) if bgr else result
