"""Query detectors (transformers DETR, Conditional DETR, YOLOS, RT-DETR; random weights from small configs, no
downloads) exported with task="detection": each query is an instance; the bundle's per-query boxes and activated
class scores equal the model's own outputs after its post-processing activation, and each explained instance's
gradient w.r.t. the target layer is within 1e-4 relative of torch autograd of that same score (RT-DETR: autograd with
its detaches undone, at its decoder's input projections, the only RT-DETR targets export accepts; see
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
        model = t.RTDetrForObjectDetection(t.RTDetrConfig(
            backbone_config=backbone, use_pretrained_backbone=False, encoder_in_channels=[16, 16, 32],
            encoder_hidden_dim=32, d_model=32, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
            decoder_attention_heads=2, decoder_layers=1, num_queries=QUERIES, num_labels=CLASSES,
            decoder_in_channels=[32, 32, 32], num_denoising=0))
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
    if kind != "rt_detr":
        yield
        return
    original = torch.Tensor.detach
    torch.Tensor.detach = lambda self: self
    try:
        yield
    finally:
        torch.Tensor.detach = original


TARGETS = {"detr": ["model.backbone.model.encoder.stages.3", "model.encoder"],
           "conditional_detr": [None, "model.encoder"],
           "yolos": ["vit.embeddings.patch_embeddings.projection"],
           "rt_detr": [None, "model.decoder_input_proj.2"]}


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
    got_scores, got, boxes, scores = session.run(["logits", "gradients", "detection_boxes", "detection_scores"], feed)
    module = model.get_submodule(manifest.target_layer)
    for row, (image, query, cls) in enumerate(rows):
        captured = []
        handle = module.register_forward_hook(lambda m, i, o: captured.append(o if torch.is_tensor(o) else o[0]))
        try:
            pixels = torch.from_numpy(normalised[image : image + 1]).requires_grad_(True)  # frozen backbones
            with _full_derivative(kind):
                out = model(pixel_values=pixels)
            activated = _activated(kind, out.logits)
            score = activated[0, query, cls]
            (want,) = torch.autograd.grad(score, captured[0])
        finally:
            handle.remove()
        want = want[0].numpy()
        if want.ndim == 2:  # encoder tokens [h*w, d] -> [d, h, w], as the bundle's map
            want = want.T.reshape(got.shape[1:])
        # the bundle's scores and boxes are the model's own
        assert np.abs(scores[row] - activated[0].detach().numpy()).max() <= 1e-5
        cx, cy, w, h = (out.pred_boxes[0, query].detach().numpy() * np.array([SIZE[1], SIZE[0]] * 2))
        assert np.abs(boxes[row, query] - [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]).max() <= 1e-3
        assert abs(float(got_scores[row, cls]) - float(score)) <= 1e-5
        scale = float(np.abs(want).max())
        assert scale > 0
        error = float(np.abs(got[row] - want).max()) / scale
        assert error <= 1e-4, f"{kind} {layer} row {row}: relative gradient error {error:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("kind,layer", [(k, layer) for k, layers in TARGETS.items() for layer in layers])
def test_query_detector_gradients_boxes_and_scores(kind, layer, tmp_path) -> None:
    _check(kind, layer, tmp_path)


def test_query_detector_refuses_a_token_target_it_cannot_reshape(tmp_path) -> None:
    with pytest.raises(LayerError, match="4-D map"):
        fusioncam.export_torch(_small("yolos"), "vit.encoder", tmp_path / "bundle", input_size=SIZE,
                               task="detection")


def test_rt_detr_refuses_layers_whose_gradients_are_not_verified(tmp_path) -> None:
    with pytest.raises(LayerError, match="decoder_input_proj"):
        fusioncam.export_torch(_small("rt_detr"), "model.encoder.pan_blocks.1", tmp_path / "bundle",
                               input_size=SIZE, task="detection")
