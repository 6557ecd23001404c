"""Target modules of a PyTorch classifier: which modules make maps, which a user would pick, which one is automatic.

One forward with a hook on every module records, in the order modules finish, the first tensor each returns (a
tuple's or model-output object's first tensor) and the map layout it makes (channels-first, channels-last, tokens).
The automatic target is the last such module whose map positions get a non-zero gradient of the predicted logit
(torch autograd on that same forward): a ViT head that reads only the class token gives the last block's patch
tokens zero gradient, so the choice moves back to the last block's first norm, as pytorch-grad-cam's users do.
Modules inside an attention module (projections) are never the automatic choice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import LayerError, ModelLoadError
from .layers import Layer, automatic_candidates
from .module_outputs import model_logits, pick_tensor
from .target_layout import TOKENS, detect_layout

SKIPPED_MODULES = ("Dropout", "Softmax", "DropPath", "Identity")  # never maps worth explaining
TOKEN_PROJECTIONS = ("Linear", "NonDynamicallyQuantizableLinear")  # q/k/v and MLP projections of tokens


@dataclass
class _Seen:
    path: str
    module: object
    tensor: object


def inference_copy(model):
    """Deep copy in eval mode with every in-place op turned off (in-place ReLU would overwrite the target)."""
    import copy

    try:
        clone = copy.deepcopy(model).eval()
    except RuntimeError as exc:  # e.g. "Only Tensors created explicitly by the user (graph leaves) support deepcopy"
        raise ModelLoadError(
            f"the model cannot be copied for export ({str(exc).splitlines()[0]}): a module keeps tensors computed "
            f"with autograd (timm's LeViT caches attention biases after a forward with gradients). Clear such caches "
            f"(for timm: model.train(); model.eval()) or export a freshly built model."
        ) from None
    for module in clone.modules():
        if hasattr(module, "inplace") and isinstance(module.inplace, bool):
            module.inplace = False
    return clone


def _forward_recording(model, input_size: tuple[int, int], output, with_grad: bool):
    """(logits, [modules in finishing order with their first tensor]) of one forward on a batch of 2 images."""
    import torch

    seen: list[_Seen] = []
    handles = []
    for path, module in model.named_modules():
        if not path or any(word in type(module).__name__ for word in SKIPPED_MODULES):
            continue

        def hook(_m, _i, out, path=path, module=module):
            try:
                tensor = pick_tensor(out, None, path)
            except LayerError:
                return
            if not tensor.is_floating_point() or any(s.path == path for s in seen):
                return
            same = next((s for s in seen if s.tensor is tensor), None)
            if same is None:
                seen.append(_Seen(path, module, tensor))
            elif isinstance(out, torch.Tensor):
                # an enclosing module returning the same tensor names it (resnet's `layer4`, not `layer4.1.relu`);
                # one wrapping it in an output object does not (Hugging Face SwinModel: `swin.layernorm`)
                same.path, same.module = path, module

        handles.append(module.register_forward_hook(hook))
    image = torch.randn(2, 3, *input_size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.set_grad_enabled(with_grad):
            logits = model_logits(model(image), output)
    finally:
        for handle in handles:
            handle.remove()
    return logits, seen


def _layer(seen: _Seen, input_size: tuple[int, int]) -> Layer | None:
    shape = ("N", *seen.tensor.shape[1:])
    if seen.tensor.shape[0] != 2:
        return None  # [N*windows, ...]: not one map per image
    layout = detect_layout(shape, input_size, name=f"module '{seen.path}'")
    if layout is None:
        return None
    source = None if layout.kind == "nchw" else shape
    return Layer(name=seen.path, shape=("N", *layout.map_shape(shape)[1:]), op_type=type(seen.module).__name__,
                 layout=layout, source_shape=source)


def _stage_ends(model, paths: set[str]) -> set[str]:
    """Paths of the last child of each Sequential/ModuleList of at least 2 map-making blocks (a stage's last block).
    A container inside one of those blocks (ResNet's `layer2.0.downsample`, Res2Net's per-scale convs) is part of a
    block, not a stage: it is left out."""
    import torch

    containers = (torch.nn.Sequential, torch.nn.ModuleList)
    ends, blocks = set(), []
    for path, module in model.named_modules():  # outer containers come before the ones inside them
        if isinstance(module, containers):
            if any(path.startswith(block + ".") for block in blocks):
                continue
            named = [(f"{path}.{name}" if path else name, child) for name, child in module.named_children()]
            blocks += [child_path for child_path, child in named if not isinstance(child, containers)]
            children = [child_path for child_path, _ in named]
            if len(children) < 2 or sum(child in paths for child in children) + (path in paths) < 2:
                continue
            if children[-1] in paths:
                ends.add(children[-1])
            elif path in paths:  # the stage returns its last block's tensor, so the stage names it ("layer4")
                ends.add(path)
    return ends


def list_torch_layers(model, input_size: tuple[int, int] = (224, 224), output=None) -> list[Layer]:
    """Module paths whose output (its first tensor) makes a map, in the order they finish, with shapes; the last
    block of each stage, the final norm and the automatic choice are marked in `role`."""
    import torch

    model = inference_copy(model)
    with torch.no_grad():
        _, seen = _forward_recording(model, input_size, output, with_grad=False)
    layers = [layer for layer in (_layer(s, input_size) for s in seen) if layer is not None]
    names = {layer.name for layer in layers}
    stage_ends = _stage_ends(model, names)
    norms = [layer.name for layer in layers if "Norm" in layer.op_type and min(layer.spatial) > 1]
    try:
        automatic = auto_torch_target(model, input_size, output)
    except LayerError:
        automatic = None
    marked = []
    for layer in layers:
        roles = [role for role, hit in (("automatic target", layer.name == automatic),
                                        ("last block of a stage", layer.name in stage_ends),
                                        ("final norm", bool(norms) and layer.name == norms[-1])) if hit]
        marked.append(replace(layer, role=", ".join(roles)))
    return marked


def attention_parts(model) -> set[str]:
    """Paths of the modules inside an attention module (a class named `...Attention...` that is not a whole block or
    layer): its query/key/value projections, convolutional projections (CvT), keys_values (LeViT), to_query/to_key
    (SwiftFormer). They are parts of a computation, not representations: never automatic targets, although the
    attention module's own output may be (and a CvT or LeViT head reading few tokens gives them the last gradient)."""
    parts = set()
    for path, module in model.named_modules():
        name = type(module).__name__
        if "Attention" in name and not any(word in name for word in ("Block", "Layer", "Stage")):
            parts |= {f"{path}.{child}" if path else child for child, _ in module.named_modules() if child}
    return parts


def auto_torch_target(model, input_size: tuple[int, int], output=None) -> str:
    """The module path of the last map whose positions get a non-zero gradient of the top class's logit.

    For a segmentation model (class scores [N, C, H', W']) the score is the sum of every pixel's top-class score and
    maps with C channels are left out (the per-pixel classifier and its upsampled copies), as the ONNX route does:
    DeepLabV3's choice is the head's last ReLU map."""
    import torch

    model = inference_copy(model)
    logits, seen = _forward_recording(model, input_size, output, with_grad=True)
    layers = {s.path: (s, layer) for s in seen if (layer := _layer(s, input_size)) is not None}
    inside_attention = attention_parts(model)
    allowed = [layer for layer in automatic_candidates([layer for _s, layer in layers.values()], input_size)
               if not (layer.layout.kind == TOKENS and layer.op_type in TOKEN_PROJECTIONS)
               and layer.name not in inside_attention]
    if not allowed:
        raise LayerError("no module of the model outputs a feature map (4-D, or tokens on a grid) with spatial size "
                         "> 1; pass target_layer (see fusioncam.list_layers(model))")
    if logits.dim() == 4:  # per-pixel class scores [N, C, H', W']: a segmentation model
        # as the ONNX route's auto_segmentation_target: neither the class scores nor copies of them (C channels)
        allowed = [layer for layer in allowed if layer.channels != logits.shape[1]]
        if not allowed:
            raise LayerError("no module outputs a feature map with spatial size > 1 whose channel count differs from "
                             "the number of classes; pass target_layer (see fusioncam.list_layers(model))")
    tensors = [layers[layer.name][0].tensor for layer in allowed]
    usable = [t.requires_grad for t in tensors]
    score = logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()  # per pixel too: the predicted class's scores
    grads = torch.autograd.grad(score, [t for t, ok in zip(tensors, usable) if ok], allow_unused=True)
    grads = iter(grads)
    reaching = []
    for layer, ok in zip(allowed, usable):
        grad = next(grads) if ok else None
        if grad is None:
            continue
        if layer.layout.kind == TOKENS:
            grad = grad[:, layer.layout.prefix_tokens:]
        if bool(grad.abs().max() > 0):
            reaching.append(layer.name)
    if not reaching:
        raise LayerError("no feature map of the model has positions that reach the logits; pass target_layer "
                         "(see fusioncam.list_layers(model))")
    return reaching[-1]
