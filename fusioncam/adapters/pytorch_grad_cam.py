"""`FusionCAM`: the call pytorch-grad-cam users know, `cam(input_tensor=..., targets=...) -> [N, H, W]`, on fusioncam.

Bundles come from the user cache (see default_model): a torch.nn.Module is exported on first use for each
input size, keyed by its weights, so changing the weights gives a new export.
"""

from __future__ import annotations

import os

import numpy as np

from .. import arguments
from ..bundle import Bundle, bundle_of, load_bundle
from ..errors import InputError, LayerError, ModelLoadError
from ..runtime import Explainer, Explanation
from ..runtime.methods.compat import check_compat


class FusionCAM:
    """Fusion-CAM for a bundle directory, an `.onnx` file or a `torch.nn.Module` (which needs `target_layer`).

    compat="pytorch-grad-cam" builds Fusion-CAM on pytorch-grad-cam's Score-CAM (see Explainer's compat), which
    `last_explanation.scorecam` then holds.
    """

    def __init__(self, model, target_layer=None, device: str = "auto", batch_size: int | None = None,
                 class_names: list[str] | None = None, compat: str | None = None) -> None:
        self.compat = check_compat(compat)
        arguments.text("device", device)
        arguments.integer("batch_size", batch_size, minimum=1, allow_none=True)
        arguments.string_list("class_names", class_names)
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self.class_names = class_names
        self.last_explanation: Explanation | None = None
        self._explainers: dict[tuple, Explainer] = {}
        if isinstance(bundle_of(model), Bundle):  # a loaded bundle, or the result of an export: its directory
            model = self.model = bundle_of(model).path
        if _is_module(model):
            if target_layer is None:
                raise LayerError("target_layer is required for a torch.nn.Module: a module path such as 'layer4' or "
                                 "the module itself (see fusioncam.list_layers(model))")
            self.target_layer = _module_path(model, target_layer)
        elif isinstance(model, (str, os.PathLike)):
            if not os.path.exists(model):
                raise ModelLoadError(f"model file not found: {model}")
            self.target_layer = target_layer if target_layer is None else str(target_layer)
            if self.target_layer is not None and os.path.isdir(model):
                _check_bundle_layer(model, self.target_layer)
            elif self.target_layer is not None:
                _check_onnx_layer(model, self.target_layer)
        else:
            raise ModelLoadError(f"FusionCAM needs a bundle directory, an .onnx path or a torch.nn.Module; got "
                                 f"{type(model).__name__}")

    def bundle(self, input_size: tuple[int, int]) -> Bundle:
        """The bundle that explains inputs of size (H, W), exported into the cache if needed."""
        from ..bundle_cache import module_bundle, onnx_bundle

        if _is_module(self.model):
            return module_bundle(self.model, self.target_layer, tuple(input_size), self.class_names)
        if os.path.isdir(self.model):
            bundle = load_bundle(self.model)
            if self.target_layer not in (None, bundle.manifest.target_layer, bundle.manifest.target_tensor):
                raise LayerError(f"bundle {self.model} explains layer '{bundle.manifest.target_layer}', not "
                                 f"'{self.target_layer}'; export a bundle for that layer")
            return bundle
        return onnx_bundle(self.model, self.target_layer, tuple(input_size))

    def explainer(self, input_size: tuple[int, int]) -> Explainer:
        """The Explainer for inputs of size (H, W); reused while the model's weights and the size stay the same."""
        key = (tuple(input_size), self._fingerprint())
        if key not in self._explainers:
            self._explainers[key] = Explainer(self.bundle(input_size), device=self.device, batch_size=self.batch_size,
                                              compat=self.compat)
        return self._explainers[key]

    def _fingerprint(self) -> str:
        """What makes a module's export stale: its weights (checked on every call, so fine-tuning is seen)."""
        if _is_module(self.model):
            from ..export.torch_export import state_sha256

            return state_sha256(self.model)
        return ""

    def __call__(self, input_tensor, targets=None) -> np.ndarray:
        """Fusion-CAM maps, float32 [N, H, W] in [0, 1], for preprocessed images [N, 3, H, W] (NumPy or torch).

        targets: None (each image's top class), an int or class name for all images, one per image, or
        objects with a `.category` attribute such as pytorch-grad-cam's ClassifierOutputTarget.
        """
        images = _as_numpy(input_tensor)
        if images.ndim != 4:
            raise InputError(f"input_tensor must be [N, 3, H, W]; got shape {tuple(images.shape)}")
        explainer = self.explainer((int(images.shape[2]), int(images.shape[3])))
        self.last_explanation = explainer.explain(images, targets=_plain_targets(targets))
        return self.last_explanation.fusion

    def __enter__(self) -> "FusionCAM":
        return self

    def __exit__(self, *exc_info) -> None:
        self._explainers.clear()


def _is_module(model) -> bool:
    """True for a torch.nn.Module, without importing torch when it is not loaded."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _module_path(model, target_layer) -> str:
    """A target layer as a module path: a string as given, or a submodule (alone or in a one-item list) looked up."""
    if isinstance(target_layer, (list, tuple)):
        if len(target_layer) != 1:
            raise LayerError(f"Fusion-CAM explains one target layer; got {len(target_layer)}")
        target_layer = target_layer[0]
    if isinstance(target_layer, str):
        from ..export.torch_export import module_by_path

        module_by_path(model, target_layer)  # a path that does not exist fails now, naming the closest ones
        return target_layer
    for path, module in model.named_modules():
        if module is target_layer and path:
            return path
    raise LayerError(f"target_layer {type(target_layer).__name__} is not a submodule of the model")


def _check_bundle_layer(folder, target_layer: str) -> None:
    """A bundle explains one layer: asking it for another fails here, at construction, not at the first call."""
    manifest = load_bundle(folder, verify=False).manifest
    if target_layer not in (manifest.target_layer, manifest.target_tensor):
        raise LayerError(f"bundle {folder} explains layer '{manifest.target_layer}', not '{target_layer}'; export a "
                         f"bundle for that layer, or leave target_layer out")


def _check_onnx_layer(path, target_layer: str) -> None:
    """An .onnx model's target is a tensor name: one the graph does not compute fails here, at construction, with
    the closest names (the graph is read without its external weights)."""
    import difflib

    import onnx

    try:
        graph = onnx.load(os.fspath(path), load_external_data=False).graph
    except Exception as exc:  # onnx raises DecodeError and others for a file that is not ONNX
        raise ModelLoadError(f"{path} cannot be read as an ONNX model: {str(exc).splitlines()[0] if str(exc) else exc}"
                             ) from None
    names = {name for node in graph.node for name in node.output if name}
    if target_layer not in names:
        close = difflib.get_close_matches(target_layer, sorted(names), n=5, cutoff=0.3)
        hint = f" Closest tensor names: {', '.join(close)}." if close else ""
        raise LayerError(f"unknown target layer '{target_layer}': no tensor of that name in {path}.{hint} List them "
                         f"with `fusioncam layers {path}`.")


def _as_numpy(input_tensor) -> np.ndarray:
    """A torch tensor (any device, with or without grad) or array-like as float32 NumPy."""
    array = arguments.image_array("input_tensor", input_tensor)
    if hasattr(array, "get") and not isinstance(array, np.ndarray):  # a CuPy array: the wrapper works on the host
        array = array.get()
    array = np.asarray(array)
    if array.dtype.kind != "f":
        raise InputError(f"input_tensor has dtype {array.dtype}; give preprocessed float images [N, 3, H, W]")
    return np.ascontiguousarray(array, dtype=np.float32)


def _plain_targets(targets):
    """Targets with every `.category` object (pytorch-grad-cam style) replaced by its class index."""
    def plain(target):
        if hasattr(target, "category"):
            target = target.category
        if hasattr(target, "item") and not isinstance(target, str):
            target = target.item()  # a NumPy or torch scalar
        return target

    if targets is None or isinstance(targets, str) or hasattr(targets, "category"):
        return plain(targets)
    if isinstance(targets, (list, tuple)):
        return [plain(t) for t in targets]
    if hasattr(targets, "tolist"):
        return targets.tolist()
    return targets
