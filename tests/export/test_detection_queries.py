"""Query detectors (transformers DETR, Conditional DETR, YOLOS, RT-DETR and RT-DETR v2; random weights from small
configs, no downloads) exported with task="detection": each query is an instance; the bundle's per-query boxes and
activated class scores equal the model's own outputs after its post-processing activation, and each explained
instance's gradient w.r.t. the target layer is within 1e-4 relative of torch autograd of that same score (RT-DETR:
autograd with its detaches undone and contiguous gradients into its BatchNorm2d layers, at the backbone's last stage
and the hybrid encoder's first and last output levels (v2: its backbone's last stage), that reference itself checked
against the model's finite differences; see _full_derivative, _contiguous_batch_norm_gradients and
fusioncam/export/detection_queries.py). Conditional DETR's graph writes its reference points with ScatterND (slice
assignment), differentiated by grad_rules/scatter_nd.py."""

from __future__ import annotations

import contextlib

import numpy as np
import onnxruntime as ort
import pytest
import torch

import fusioncam
from fusioncam.errors import LayerError
from fusioncam.graph_names import layer_gradients

SIZE = (64, 64)
CLASSES = 3
QUERIES = 6


def _resnet():
    from transformers import ResNetConfig

    return ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                        out_features=["stage4"])


def _small(kind: str):
    import transformers as t

    torch.manual_seed(0)
    common = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32, decoder_ffn_dim=32,
                  encoder_attention_heads=2, decoder_attention_heads=2, num_queries=QUERIES, num_labels=CLASSES)
    if kind == "detr":
        model = t.DetrForObjectDetection(t.DetrConfig(use_timm_backbone=False, backbone_config=_resnet(),
                                                      use_pretrained_backbone=False, **common))
    elif kind == "conditional_detr":
        model = t.ConditionalDetrForObjectDetection(t.ConditionalDetrConfig(
            use_timm_backbone=False, backbone_config=_resnet(), use_pretrained_backbone=False, **common))
    elif kind == "yolos":
        model = t.YolosForObjectDetection(t.YolosConfig(
            image_size=list(SIZE), patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, num_detection_tokens=QUERIES, num_labels=CLASSES))
    else:
        from transformers import RTDetrResNetConfig

        backbone = RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                      out_features=["stage2", "stage3", "stage4"])
        # RT-DETR v2 (per-level sampling points in its deformable attention) needs two decoder layers: transformers
        # 5.25 cannot build it with one (its bbox_embed weight tying finds nothing to tie)
        config, detector = ((t.RTDetrV2Config, t.RTDetrV2ForObjectDetection) if kind == "rt_detr_v2"
                            else (t.RTDetrConfig, t.RTDetrForObjectDetection))
        model = detector(config(
            backbone_config=backbone, use_pretrained_backbone=False, encoder_in_channels=[16, 16, 32],
            encoder_hidden_dim=32, d_model=32, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
            decoder_attention_heads=2, decoder_layers=2 if kind == "rt_detr_v2" else 1, num_queries=QUERIES,
            num_labels=CLASSES, decoder_in_channels=[32, 32, 32], num_denoising=0))
        # transformers' RT-DETR init (std 0.01, zero heads, small norms) shrinks a random model's activations to ~1e-10: every
        # encoder token's score ties, and the top-k order of ties is each runtime's own choice. PyTorch's default
        # layer init keeps them apart.
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                module.reset_parameters()
    return model.eval()


def _activated(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """The model's own post-processing activation (transformers' post_process_object_detection)."""
    if kind in ("detr", "yolos"):
        return torch.softmax(logits, dim=-1)[..., :-1]
    return torch.sigmoid(logits)


@contextlib.contextmanager
def _full_derivative(kind: str):
    """RT-DETR detaches its reference points and initial queries (training-time stop-gradients); an ONNX graph keeps
    no detach, so its gradient is the score's full derivative. The reference is torch autograd of the same forward
    with those detaches undone (Tensor.detach as the identity) for RT-DETR; the model as it is for the others."""
    if kind not in ("rt_detr", "rt_detr_v2"):
        yield
        return
    original = torch.Tensor.detach
    torch.Tensor.detach = lambda self: self
    try:
        yield
    finally:
        torch.Tensor.detach = original


@contextlib.contextmanager
def _contiguous_batch_norm_gradients(model: torch.nn.Module):
    """PyTorch's CPU backward of an eval-mode BatchNorm2d whose input is a contiguous one-image batch and whose
    incoming gradient has the strides `flatten(2).transpose(1, 2)` gives it ((C, 1, W*C, C)) returns that gradient's
    memory read as contiguous: a permuted, wrong input gradient (torch 2.14.1;
    test_reference_batch_norm_gradient_is_the_affine_maps). RT-DETR flattens its decoder input projections' outputs
    (conv + BatchNorm2d) to tokens that way, so autograd at every layer before them (the hybrid encoder, the
    backbone) was wrong by a relative 1 to 3 while fusioncam's gradient matched the model's finite differences. The
    reference hands each BatchNorm2d a contiguous copy of its incoming gradient (same values); the forward is
    unchanged."""
    def contiguous_gradient(_module, _inputs, output):
        if output.requires_grad:
            output.register_hook(lambda grad: grad.contiguous())

    handles = [m.register_forward_hook(contiguous_gradient) for m in model.modules()
               if isinstance(m, torch.nn.BatchNorm2d)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


TARGETS = {"detr": ["model.backbone.model.encoder.stages.3", "model.encoder"],
           "conditional_detr": [None, "model.encoder"],
           "yolos": ["vit.embeddings.patch_embeddings.projection"],
           # RT-DETR: the hybrid encoder's three output levels in one bundle (the default; each reaching the decoder
           # through its decoder_input_proj, conv + BatchNorm2d, and the coarser ones computed from the finer), and the
           # backbone's last stage (its gradient comes back through all three levels)
           "rt_detr": [None, "model.backbone.model.encoder.stages.3"],
           "rt_detr_v2": [None]}


def _check(kind: str, layer: str | None, tmp_path) -> None:
    model = _small(kind)
    result = fusioncam.export_torch(model, layer, tmp_path / "bundle", input_size=SIZE, task="detection")
    manifest = result.bundle.manifest
    mean = np.array(manifest.mean, np.float32)[:, None, None]
    std = np.array(manifest.std, np.float32)[:, None, None]
    images = np.random.default_rng(0).random((2, 3, *SIZE)).astype(np.float32)
    normalised = ((images - mean) / std).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "bundle" / "explain.onnx"), providers=["CPUExecutionProvider"])
    rows = [(0, 0, 0), (1, QUERIES - 1, CLASSES - 1), (0, 2, 1)]
    feed = {"input": normalised[[r[0] for r in rows]], "anchor": np.array([r[1] for r in rows], np.int64),
            "target": np.array([r[2] for r in rows], np.int64),
            "reference_box": np.array([[0, 0, *SIZE]] * 3, np.float32), "instance_image": np.arange(3)}
    layers = result.bundle.layer_names  # several for RT-DETR's default: its encoder's levels, finest first
    if kind.startswith("rt_detr") and layer is None:
        assert layers == ["model.encoder.fpn_blocks.1", "model.encoder.pan_blocks.0", "model.encoder.pan_blocks.1"]
    gradient_names = [layer_gradients(index) for index in range(len(layers))]
    got_scores, boxes, scores, *got = session.run(["logits", "detection_boxes", "detection_scores", *gradient_names],
                                                  feed)
    modules = [model.get_submodule(name) for name in layers]
    for row, (image, query, cls) in enumerate(rows):
        captured = {}
        handles = [module.register_forward_hook(
            lambda m, i, o, index=index: captured.__setitem__(index, o if torch.is_tensor(o) else o[0]))
            for index, module in enumerate(modules)]
        try:
            pixels = torch.from_numpy(normalised[image : image + 1]).requires_grad_(True)  # frozen backbones
            with _full_derivative(kind), _contiguous_batch_norm_gradients(model):
                out = model(pixel_values=pixels)
            activated = _activated(kind, out.logits)
            score = activated[0, query, cls]
            wanted = torch.autograd.grad(score, [captured[index] for index in range(len(modules))])
        finally:
            for handle in handles:
                handle.remove()
        # the bundle's scores and boxes are the model's own
        assert np.abs(scores[row] - activated[0].detach().numpy()).max() <= 1e-5
        cx, cy, w, h = (out.pred_boxes[0, query].detach().numpy() * np.array([SIZE[1], SIZE[0]] * 2))
        assert np.abs(boxes[row, query] - [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]).max() <= 1e-3
        assert abs(float(got_scores[row, cls]) - float(score)) <= 1e-5
        for index, want in enumerate(wanted):
            want = want[0].numpy()
            if want.ndim == 2:  # encoder tokens [h*w, d] -> [d, h, w], as the bundle's map
                want = want.T.reshape(got[index].shape[1:])
            scale = float(np.abs(want).max())
            assert scale > 0
            error = float(np.abs(got[index][row] - want).max()) / scale
            assert error <= 1e-4, f"{kind} {layers[index]} row {row}: relative gradient error {error:.2e}"


@pytest.mark.slow
def test_rt_detr_reference_is_the_models_derivative() -> None:
    """The RT-DETR reference (autograd with detaches undone, contiguous BatchNorm2d gradients) is the derivative of the
    function the model computes: along a random direction at the backbone's last stage and at two hybrid-encoder
    outputs, its directional derivative equals float64 central differences of the model's score (the perturbation
    added to the layer's output by a forward hook) within 1e-5 of the gradient's norm."""
    model = _small("rt_detr").double()
    pixels = torch.from_numpy(np.random.default_rng(0).random((1, 3, *SIZE)))
    layers = ("model.backbone.model.encoder.stages.3", "model.encoder.fpn_blocks.1", "model.encoder.pan_blocks.0")
    captured, shift = {}, {}

    def perturbed(module, _inputs, output):
        captured[module] = output
        return output + shift[module] if module in shift else None

    modules = [model.get_submodule(layer) for layer in layers]
    handles = [module.register_forward_hook(perturbed) for module in modules]

    def score() -> torch.Tensor:
        return torch.sigmoid(model(pixel_values=pixels).logits)[0, 0, 0]

    try:
        with _full_derivative("rt_detr"), _contiguous_batch_norm_gradients(model):
            gradients = torch.autograd.grad(score(), [captured[module] for module in modules])
        rng = np.random.default_rng(1)
        for layer, module, gradient in zip(layers, modules, gradients):
            direction = torch.from_numpy(rng.standard_normal(tuple(gradient.shape)))
            direction /= direction.norm()
            step = 1e-6 * float(captured[module].detach().abs().max())
            sides = []
            for sign in (1.0, -1.0):
                shift[module] = sign * step * direction
                with torch.no_grad():
                    sides.append(float(score()))
            shift.clear()
            central = (sides[0] - sides[1]) / (2 * step)
            assert abs(float((gradient * direction).sum()) - central) <= 1e-5 * float(gradient.norm()), layer
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.slow
@pytest.mark.parametrize("kind,layer", [(k, layer) for k, layers in TARGETS.items() for layer in layers])
def test_query_detector_gradients_boxes_and_scores(kind, layer, tmp_path) -> None:
    _check(kind, layer, tmp_path)


def test_query_detector_refuses_a_token_target_it_cannot_reshape(tmp_path) -> None:
    with pytest.raises(LayerError, match="4-D map"):
        fusioncam.export_torch(_small("yolos"), "vit.encoder", tmp_path / "bundle", input_size=SIZE,
                               task="detection")


def test_rt_detr_default_target_is_its_encoders_levels(tmp_path) -> None:
    from fusioncam.export.detection_queries import _default_target, encoder_levels

    model = _small("rt_detr")
    assert _default_target(model) == "model.encoder"
    assert encoder_levels(model) == ["model.encoder.fpn_blocks.1", "model.encoder.pan_blocks.0",
                                     "model.encoder.pan_blocks.1"]
    with pytest.raises(LayerError, match=r"target layer 'model.decoder\['"):
        fusioncam.export_torch(model, ["model.encoder.pan_blocks.0", "model.decoder"], tmp_path / "bundle",
                               input_size=SIZE, task="detection")


@pytest.mark.parametrize("layout,batch", [("tokens", 1), ("tokens", 2), ("channels_last", 1), ("contiguous", 1)])
def test_reference_batch_norm_gradient_is_the_affine_maps(layout, batch) -> None:
    """The reference's eval-mode BatchNorm2d input gradient, under _contiguous_batch_norm_gradients, is dy * weight /
    sqrt(running_var + eps) per channel (BN in eval is that affine map) whatever the strides of the incoming
    gradient: those RT-DETR's flatten(2).transpose(1, 2) gives it (for one image (C, 1, W*C, C)), explicit
    channels-last, and contiguous. Without the hooks torch 2.14.1's CPU kernel gets the one-image "tokens" case
    wrong (it returns that gradient's memory read as contiguous: errors as large as the gradient) and the others
    right."""
    torch.manual_seed(0)
    norm = torch.nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.running_var.uniform_(0.5, 2.0)
        norm.running_mean.uniform_(-1.0, 1.0)
    x = torch.randn(batch, 4, 3, 5, requires_grad=True)
    upstream = torch.randn(batch, 4, 3, 5)
    with _contiguous_batch_norm_gradients(norm):
        y = norm(x)
    if layout == "tokens":  # the gradient reaches y through the transpose: channels-last strides
        tokens = upstream.flatten(2).transpose(1, 2).contiguous()
        (got,) = torch.autograd.grad((y.flatten(2).transpose(1, 2) * tokens).sum(), x)
    else:
        memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        (got,) = torch.autograd.grad(y, x, upstream.contiguous(memory_format=memory_format))
    factor = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).detach().reshape(1, -1, 1, 1)
    assert torch.allclose(got, upstream * factor, rtol=1e-6, atol=1e-6)
