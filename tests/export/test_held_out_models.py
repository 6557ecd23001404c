"""Models a held-out coverage run found failing, each exported and checked against torch autograd (1e-4 relative).

- segmentation with an automatic target (torchvision DeepLabV3, LRASPP, FCN; Hugging Face DPT): the last map with
  spatial size > 1 and a channel count other than the classes', as the ONNX route picks;
- Hugging Face DPT, whose class scores ONNX shape inference leaves as ('unk', C, 'unk', 'unk');
- timm VOLO, whose auxiliary head takes a max over tokens (ReduceMax);
- Hugging Face CvT, LeViT and SwiftFormer, whose automatic targets were attention projections;
- a 'no gradient rule' error names the torch module the op came from.

Random weights, tiny configs or small inputs, no downloads.
"""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest
import torch

import fusioncam
from fusioncam.errors import UnsupportedOpError
from fusioncam.export.torch_scopes import TorchOrigin, torch_origin
from fusioncam.export.torch_targets import auto_torch_target
from tests.support.autograd_reference import assert_parity, autograd_layer_gradients, run_explain_graph
from tests.support.onnx_graphs import assert_close
from tests.support.segmentation_reference import activations_and_gradients, box_mask, region_array
from tests.support.transformer_cases import LogitsOnly, tapped

transformers = pytest.importorskip("transformers", reason="transformers is in the test extra: pip install -e '.[test]'")


# ----- segmentation: automatic targets and DPT's shapes --------------------------------------------------------------


def _torchvision_segmentation(name: str, classes: int = 5) -> torch.nn.Module:
    from torchvision.models import segmentation

    torch.manual_seed(0)
    return getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=classes).eval()


def _tiny_dpt(classes: int = 5) -> torch.nn.Module:
    """A 4-layer DPT at 48x48 (6x6 patch tokens: no map side or channel count equals a token count)."""
    torch.manual_seed(0)
    config = transformers.DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                                    image_size=48, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
                                    neck_hidden_sizes=[8, 24, 40, 48], fusion_hidden_size=24, num_labels=classes,
                                    use_auxiliary_head=False)
    return transformers.DPTForSemanticSegmentation(config).eval()


SEGMENTATION = {
    # name: (factory, input size, the automatic target: the head's last map before the per-pixel classifier)
    "deeplabv3_mobilenet_v3": (lambda: _torchvision_segmentation("deeplabv3_mobilenet_v3_large"), 64, "classifier.3"),
    "lraspp_mobilenet_v3": (lambda: _torchvision_segmentation("lraspp_mobilenet_v3_large"), 64, "classifier.cbr"),
    "dpt_tiny": (_tiny_dpt, 48, "head.head.2"),
}


def _segmentation_parity(model, layer_path: str, bundle, size: int) -> None:
    """Explain graph vs torch autograd of the region score: whole image (largest class), a box (class 1), the
    predicted region of the largest class."""
    shape = (size, size)
    images = np.random.default_rng(3).standard_normal((3, 3, *shape)).astype(np.float32)
    targets = [-1, 1, -1]
    regions = [np.ones(shape, np.float32), box_mask(shape, (5, 9, size - 20, size - 30)), None]
    module = dict(model.named_modules())[layer_path]
    scores, acts, grads, classes, _weights = activations_and_gradients(model, module, images, targets, regions)
    session = ort.InferenceSession(str(bundle.explain_path), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {"input": images, "target": np.array(targets),
                                      "region": region_array(regions, shape)})))
    assert got["target_used"].tolist() == classes
    assert_close(got["logits"], scores.numpy(), what="class scores")
    assert_close(got["activations"], acts.numpy(), what="activations")
    assert float(np.abs(grads.numpy()).max()) > 0
    for i, what in enumerate(("whole image", "box", "predicted region")):
        assert_close(got["gradients"][i], grads[i].numpy(), what=f"dS/dA, {what}")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SEGMENTATION))
def test_segmentation_export_with_the_automatic_target(name: str, tmp_path) -> None:
    factory, size, expected = SEGMENTATION[name]
    model = factory()
    result = fusioncam.export_torch_segmentation(model, None, tmp_path / "bundle", input_size=(size, size))
    manifest = result.bundle.manifest
    assert manifest.target_layer == expected and result.picked_automatically, result.describe()
    assert manifest.channels != manifest.num_classes and min(manifest.feature_size) > 1
    assert manifest.output_size == tuple(model(torch.zeros(1, 3, size, size))["logits" if name == "dpt_tiny" else "out"]
                                         .shape[2:])
    _segmentation_parity(model, expected, result.bundle, size)


@pytest.mark.slow
def test_fcn_automatic_target_is_its_head_relu() -> None:
    """FCN-ResNet50 (35 M parameters: not exported here, the path is the one above): FCNHead's ReLU, not its
    per-pixel classifier conv."""
    model = _torchvision_segmentation("fcn_resnet50")
    assert auto_torch_target(model, (64, 64)) == "classifier.2"


@pytest.mark.slow
def test_list_layers_marks_the_head_map_not_the_class_scores() -> None:
    model = SEGMENTATION["deeplabv3_mobilenet_v3"][0]()
    layers = fusioncam.list_layers(model, (64, 64))
    marked = [layer for layer in layers if "automatic target" in layer.role]
    assert [layer.name for layer in marked] == ["classifier.3"]
    assert any(layer.channels == 5 for layer in layers)  # the class-score maps are listed, just not picked


@pytest.mark.slow
def test_torch_and_onnx_routes_pick_the_same_deeplab_map(tmp_path) -> None:
    """The ONNX route picks a tensor; the torch route a module: the two maps hold the same values."""
    model = SEGMENTATION["deeplabv3_mobilenet_v3"][0]()

    class ScoresOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)["out"]

    buffer = io.BytesIO()
    torch.onnx.export(ScoresOnly().eval(), (torch.zeros(1, 3, 64, 64),), buffer, dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["scores"], dynamic_axes={"image": {0: "batch"}})
    (tmp_path / "deeplab.onnx").write_bytes(buffer.getvalue())
    result = fusioncam.export_onnx_segmentation(tmp_path / "deeplab.onnx", tmp_path / "bundle", input_size=(64, 64))
    assert result.picked_automatically
    images = np.random.default_rng(5).standard_normal((2, 3, 64, 64)).astype(np.float32)
    session = ort.InferenceSession(str(result.bundle.explain_path), providers=["CPUExecutionProvider"])
    (onnx_map,) = session.run(["activations"], {"input": images, "target": np.array([-1, -1]),
                                                "region": np.ones((2, 64, 64), np.float32)})
    captured = []
    module = dict(model.named_modules())[auto_torch_target(model, (64, 64))]
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out.detach().numpy()))
    with torch.no_grad():
        model(torch.from_numpy(images))
    handle.remove()
    assert_close(onnx_map, captured[0], tolerance=1e-5, what="the ONNX route's map vs the torch route's module")


# ----- VOLO: a max over tokens in the auxiliary head -----------------------------------------------------------------


@pytest.mark.slow
def test_volo_with_its_auxiliary_head_matches_autograd(tmp_path) -> None:
    pytest.importorskip("timm", reason="timm is in the test extra: pip install -e '.[test]'")
    from timm.models.volo import VOLO

    torch.manual_seed(0)
    # volo_d1_224's structure (an outlooker stage with its downsample, transformer stages, two class-attention
    # post layers, the auxiliary head) with one block per stage and narrow widths: the ops the export meets are the
    # same, with 0.5 M parameters where volo_d1_224 has 26 M
    model = VOLO(layers=(1, 1, 1, 1), embed_dims=(48, 96, 96, 96), num_heads=(2, 4, 4, 4), stem_hidden_dim=16,
                 num_classes=10, img_size=64).eval()
    assert model.aux_head is not None and model.global_pool  # the head adds 0.5 * aux_head(tokens).max(1)[0]
    result = fusioncam.export_torch(model, None, tmp_path / "bundle", input_size=(64, 64))
    layout = result.layer.layout
    assert (result.bundle.manifest.target_layer, layout.kind, layout.prefix_tokens, layout.grid) == \
        ("norm", "tokens", 1, (4, 4)), result.describe()
    import onnx

    explain = onnx.load(str(result.bundle.explain_path), load_external_data=False)
    assert "ReduceMax" in {node.op_type for node in explain.graph.node}
    reference, tap = tapped(model, "norm", "tokens", 1, (4, 4))
    images = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    targets = [-1, 3]
    got = run_explain_graph(result.bundle.path, images, targets)
    with torch.enable_grad():
        want = autograd_layer_gradients(reference, tap, images, targets)
    assert_parity(got, want, tolerance=1e-4)


# ----- 'no gradient rule' names the torch module ---------------------------------------------------------------------


class _RunningSum(torch.nn.Module):
    def forward(self, x):
        return torch.cumsum(x, dim=1)  # CumSum: no gradient rule


class _CumulativeHead(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.accumulate = _RunningSum()

    def forward(self, x):
        return self.accumulate(self.head(self.features(x)))


def test_no_gradient_rule_names_the_torch_module(tmp_path) -> None:
    with pytest.raises(UnsupportedOpError, match=r"no gradient rule for op 'CumSum' \(node .*, from torch module "
                                                 r"'accumulate'\)"):
        fusioncam.export_torch(_CumulativeHead().eval(), "features", tmp_path / "bundle", input_size=(8, 8))


def test_torch_origin_from_dynamo_metadata_and_torchscript_names() -> None:
    from onnx import helper

    volo_max = helper.make_node("ReduceMax", ["x"], ["y"], name="node_max_1__0")
    helper.set_metadata_props(volo_max, {
        "pkg.torch.onnx.name_scopes": "['', 'model', 'max_1']",
        "pkg.torch.onnx.class_hierarchy": "['fusioncam.export.torch_export.features_wrapper.<locals>.Wrapper', "
                                          "'timm.models.volo.VOLO', 'aten.max.dim']"})
    assert torch_origin(volo_max, wrapped=False) == TorchOrigin("", "timm.models.volo.VOLO", "aten.max.dim")
    unfold = helper.make_node("Unsqueeze", ["x", "a"], ["y"], name="node_Unsqueeze_177")
    helper.set_metadata_props(unfold, {
        "pkg.torch.onnx.name_scopes": "['', 'model', 'model.network.0', 'model.network.0.2', "
                                      "'model.network.0.2.attn', 'model.network.0.2.attn.unfold', 'im2col_2']",
        "pkg.torch.onnx.class_hierarchy": "['fusioncam.export.torch_export.features_wrapper.<locals>.Wrapper', "
                                          "'timm.models.volo.VOLO', 'torch.nn.modules.container.Sequential', "
                                          "'timm.models.volo.Outlooker', 'timm.models.volo.OutlookAttention', "
                                          "'torch.nn.modules.fold.Unfold', 'aten.im2col.default']"})
    assert torch_origin(unfold, wrapped=False).describe() == \
        "torch module 'network.0.2.attn.unfold' (torch.nn.modules.fold.Unfold), aten.im2col.default"
    scoped = helper.make_node("Conv", ["x", "w"], ["y"], name="/model/layer1/layer1.0/conv2/Conv")
    assert torch_origin(scoped, wrapped=True) == TorchOrigin("layer1.0.conv2")
    assert torch_origin(scoped, wrapped=False) == TorchOrigin("model.layer1.0.conv2")
    assert torch_origin(helper.make_node("Relu", ["x"], ["y"], name="relu_7"), wrapped=False) is None


# ----- automatic targets of CvT, LeViT and SwiftFormer ---------------------------------------------------------------


def _cvt() -> torch.nn.Module:
    three = lambda value: [value] * 3  # noqa: E731
    config = transformers.CvtConfig(
        num_labels=10, embed_dim=[16, 32, 48], num_heads=[1, 2, 3], depth=[1, 2, 3],  # depth[i] > i: CvtStage indexes
        mlp_ratio=three(2.0), drop_path_rate=three(0.0), attention_drop_rate=three(0.0), drop_rate=three(0.0),
        qkv_bias=three(True), cls_token=[False, False, True], qkv_projection_method=three("dw_bn"),
        kernel_qkv=three(3), padding_kv=three(1), stride_kv=three(2), padding_q=three(1), stride_q=three(1),
        patch_sizes=[7, 3, 3], patch_stride=[4, 2, 2], patch_padding=[2, 1, 1])
    return transformers.CvtForImageClassification(config)


def _levit() -> torch.nn.Module:
    return transformers.LevitForImageClassification(transformers.LevitConfig(
        num_labels=10, image_size=64, hidden_sizes=[32, 48, 64], num_attention_heads=[1, 2, 2], depths=[1, 1, 1],
        key_dim=[8, 8, 8]))


def _swiftformer() -> torch.nn.Module:
    return transformers.SwiftFormerForImageClassification(transformers.SwiftFormerConfig(
        num_labels=10, depths=[1, 1, 1, 1], embed_dims=[16, 24, 32, 48]))


HELD_OUT_TARGETS = {
    # name: (factory, input size, torch route's automatic target, tail of the ONNX route's tensor name)
    # CvT's head reads only the class token of the last stage: its patch tokens' last reaching map is the last
    # layer's first norm (a ViT's choice), not the value projection that was picked
    "cvt": (_cvt, 64, "cvt.encoder.stages.2.layers.2.layernorm_before",
            "stages.2/layers.2/layernorm_before/LayerNormalization_output_0"),
    # LeViT's last stages are 1x1 at 64x64: the last 2x2 map is a residual block, not its subsampling keys_values
    "levit": (_levit, 64, "levit.encoder.stages.1.layers.1", "stages.1/layers.1/Add_output_0"),
    "swiftformer": (_swiftformer, 64, "norm", "norm/BatchNormalization_output_0"),
}


def _make(name: str):
    torch.manual_seed(0)
    factory, size, torch_target, onnx_tail = HELD_OUT_TARGETS[name]
    return factory().eval(), size, torch_target, onnx_tail


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HELD_OUT_TARGETS))
def test_torch_route_never_picks_an_attention_projection(name: str) -> None:
    model, size, expected, _ = _make(name)
    assert auto_torch_target(model, (size, size)) == expected


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HELD_OUT_TARGETS))
def test_onnx_route_never_picks_an_attention_operand(name: str, tmp_path) -> None:
    model, size, _, tail = _make(name)
    path = tmp_path / f"{name}.onnx"
    buffer = io.BytesIO()
    torch.onnx.export(LogitsOnly(model), (torch.zeros(1, 3, size, size),), buffer, dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}})
    path.write_bytes(buffer.getvalue())
    result = fusioncam.export_onnx(path, tmp_path / "bundle", input_size=(size, size))
    assert result.picked_automatically and result.layer.name.endswith(tail), result.describe()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HELD_OUT_TARGETS))
def test_held_out_automatic_targets_match_autograd(name: str, tmp_path) -> None:
    model, size, expected, _ = _make(name)
    result = fusioncam.export_torch(model, None, tmp_path / "bundle", input_size=(size, size))
    assert result.bundle.manifest.target_layer == expected
    layout = result.layer.layout
    reference, tap = tapped(model, expected, layout.kind, layout.prefix_tokens, layout.grid)
    images = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    targets = [-1, 3]
    got = run_explain_graph(result.bundle.path, images, targets)
    with torch.enable_grad():
        want = autograd_layer_gradients(LogitsOnly(reference), tap, images, targets)
    assert float(np.abs(want["gradients"]).max()) > 0
    assert_parity(got, want, tolerance=1e-4)


# ----- earlier models keep their automatic targets (docs/coverage.md) ------------------------------------------------

COVERAGE_ROWS = {
    "hf:vit": "vit.layers.1.layernorm_before",
    "hf:swin": "swin.layernorm",
    "hf:mobilevit": "mobilevit.conv_1x1_exp",
    "timm:xcit_nano_12_p16_224": "cls_attn_blocks.1.norm1",  # a norm inside a ClassAttentionBlock: still allowed
    "timm:levit_128s": "stages",
}


@pytest.mark.slow
@pytest.mark.parametrize("model_id", sorted(COVERAGE_ROWS))
def test_coverage_rows_keep_their_automatic_targets(model_id: str) -> None:
    from benchmarks.coverage import build

    model, size = build(model_id)
    assert auto_torch_target(model, (size, size)) == COVERAGE_ROWS[model_id]


def test_attention_operands_are_the_queries_keys_and_values_only() -> None:
    """One attention with a residual: q, k, v (through a projection, a transpose, a reshape to a run-time shape)
    only feed the attention products; the block input and the attention output reach a residual Add."""
    from onnx import TensorProto, helper

    from fusioncam.export.attention_operands import AttentionOperands

    node = helper.make_node
    nodes = [
        node("MatMul", ["x", "wq"], ["q"]), node("MatMul", ["x", "wk"], ["k"]), node("MatMul", ["x", "wv"], ["v0"]),
        node("Add", ["v0", "bv"], ["v1"]), node("Shape", ["v1"], ["v_shape"]), node("Reshape", ["v1", "v_shape"], ["v"]),
        node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), node("MatMul", ["q", "kt"], ["s"]),
        node("Softmax", ["s"], ["p"], axis=-1), node("MatMul", ["p", "v"], ["o"]), node("Add", ["o", "x"], ["r"]),
    ]
    weights = [helper.make_tensor(name, TensorProto.FLOAT, [4, 4], [0.1] * 16) for name in ("wq", "wk", "wv")]
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 4])],
                              [helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", 6, 4])],
                              [*weights, helper.make_tensor("bv", TensorProto.FLOAT, [4], [0.0] * 4)])
    operands = AttentionOperands(helper.make_model(graph), "r")
    assert [name for name in ("q", "k", "kt", "v0", "v1", "v", "s") if operands.only_attention(name)] == \
        ["q", "k", "kt", "v0", "v1", "v", "s"]
    assert not any(operands.only_attention(name) for name in ("x", "o", "r"))
