"""Target layouts (tokens, channels-last, a reshape function), automatic targets of ONNX transformers, and the export
messages of issue #13: 1x1 targets, models with several outputs, ops from custom domains."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import fusioncam
from tests.support.autograd_reference import assert_parity, autograd_layer_gradients, run_explain_graph
from fusioncam.cli.main import main
from fusioncam.errors import InputError, LayerError, ModelLoadError
from fusioncam.export.target_layout import NCHW, NHWC, TOKENS, LayoutRequest, detect_layout, token_grids
from tests.support.tiny_models import save, tiny_classifier

pytest.importorskip("timm", reason="timm is in the test extra: pip install -e '.[test]'")
from tests.support.transformer_cases import CASES, tapped  # noqa: E402  (needs timm and transformers)

IMAGES = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)


# ----- detection ------------------------------------------------------------------------------------------------

def test_token_layouts_are_detected_with_the_fewest_prefix_tokens():
    assert detect_layout(("N", 197, 768), (224, 224)) .grid == (14, 14)
    assert detect_layout(("N", 197, 768), (224, 224)).prefix_tokens == 1
    assert detect_layout(("N", 201, 384), (224, 224)).prefix_tokens == 5  # class + 4 registers
    assert detect_layout(("N", 198, 192), (224, 224)).prefix_tokens == 2  # class + distillation
    assert detect_layout(("N", 49, 512), (224, 224)).prefix_tokens == 0  # LeViT, Swin: no prefix
    assert detect_layout(("N", 14 * 10 + 1, 64), (224, 160)).grid == (14, 10)  # the grid follows the input's aspect
    assert (0, 2, 2) in token_grids(4, (64, 64)) and all(p <= 8 for p, _, _ in token_grids(200, (224, 224)))
    assert detect_layout(("N", 1000), (224, 224)) is None and detect_layout(("N", 3, 1), (32, 32)) is None


def test_channels_last_is_detected_only_when_the_last_two_dims_make_no_grid():
    assert detect_layout(("N", 7, 7, 768), (224, 224)).kind == NHWC
    assert detect_layout(("N", 768, 7, 7), (224, 224)).kind == NCHW
    assert detect_layout(("N", 7, 7, 7), (224, 224)).kind == NCHW  # undecidable: ONNX's convention
    assert detect_layout(("N", 7, 7, 7), (224, 224), LayoutRequest(channels_last=True)).kind == NHWC


def test_explicit_layouts_are_checked_against_the_shape():
    layout = detect_layout(("N", 17, 32), (32, 32), LayoutRequest(token_grid=(4, 4)))
    assert (layout.kind, layout.prefix_tokens, layout.detected) == (TOKENS, 1, False)
    with pytest.raises(LayerError, match="17 tokens; token_grid=3x3 with prefix_tokens=1 accounts for 10"):
        detect_layout(("N", 17, 32), (32, 32), LayoutRequest(token_grid=(3, 3), prefix_tokens=1))
    with pytest.raises(LayerError, match="channels_last applies to"):
        detect_layout(("N", 17, 32), (32, 32), LayoutRequest(channels_last=True))
    with pytest.raises(LayerError, match="token_grid/prefix_tokens apply to token"):
        detect_layout(("N", 7, 7, 7), (32, 32), LayoutRequest(prefix_tokens=1))


def test_layout_arguments_of_the_wrong_type_are_named(tmp_path):
    path = save(tiny_classifier(), tmp_path / "m.onnx")
    for kwargs, name in (({"token_grid": "4x4"}, "token_grid"), ({"prefix_tokens": -1}, "prefix_tokens"),
                         ({"channels_last": "yes"}, "channels_last"), ({"output": 3}, "output")):
        with pytest.raises(InputError, match=name):
            fusioncam.export_onnx(path, tmp_path / "b", "feat", **kwargs)
    assert not (tmp_path / "b").exists()


# ----- ONNX transformers ------------------------------------------------------------------------------------------

def _onnx_of(model: torch.nn.Module, path, size: int = 32) -> str:
    torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return str(path)


@pytest.fixture(scope="module")
def vit_onnx(tmp_path_factory):
    model = CASES["vit_class_token"][0]()
    return model, _onnx_of(model, tmp_path_factory.mktemp("vit") / "vit.onnx")


@pytest.mark.slow
def test_onnx_vit_automatic_target_is_the_last_blocks_first_norm(vit_onnx, tmp_path):
    model, path = vit_onnx
    result = fusioncam.export_onnx(path, tmp_path / "b")
    assert result.layer.name == "/blocks/blocks.1/norm1/LayerNormalization_output_0", result.describe()
    assert "1 prefix token(s) dropped + 4x4 patch grid" in result.describe()
    reference, tap = tapped(model, "blocks.1.norm1", "tokens", 1, (4, 4))
    with torch.enable_grad():
        want = autograd_layer_gradients(reference, tap, IMAGES, [-1, 2])
    assert_parity(run_explain_graph(result.bundle.path, IMAGES, [-1, 2]), want)


@pytest.mark.slow
def test_explicit_token_layout_gives_the_detected_map(vit_onnx, tmp_path):
    _model, path = vit_onnx
    name = "/blocks/blocks.0/Add_1_output_0"
    detected = fusioncam.export_onnx(path, tmp_path / "d", name)
    given = fusioncam.export_onnx(path, tmp_path / "g", name, token_grid=(4, 4), prefix_tokens=1)
    assert "(as given)" in given.describe() and "(detected)" in detected.describe()
    a, b = (run_explain_graph(r.bundle.path, IMAGES, [-1, 0]) for r in (detected, given))
    np.testing.assert_array_equal(a["gradients"], b["gradients"])
    with pytest.raises(LayerError, match="accounts for"):
        fusioncam.export_onnx(path, tmp_path / "x", name, token_grid=(2, 2), prefix_tokens=1)
    with pytest.raises(LayerError, match="pass target_layer too"):
        fusioncam.export_onnx(path, tmp_path / "y", token_grid=(4, 4))


@pytest.mark.slow
def test_onnx_swin_picks_a_map_not_attention_and_matches_autograd(tmp_path):
    model = CASES["swin_torchvision"][0]()
    path = _onnx_of(model, tmp_path / "swin.onnx")
    result = fusioncam.export_onnx(path, tmp_path / "b")
    assert result.layer.op_type != "Softmax" and result.layer.shape[1:] == (32, 4, 4), result.describe()
    with torch.enable_grad():
        want = autograd_layer_gradients(model, model.permute, IMAGES, [-1, 1])
    assert_parity(run_explain_graph(result.bundle.path, IMAGES, [-1, 1]), want)
    softmaxes = [layer for layer in fusioncam.list_layers(path) if layer.op_type == "Softmax"]
    assert softmaxes == []  # attention probabilities are never offered


def test_list_layers_marks_what_a_transformer_user_picks():
    model = CASES["vit_class_token"][0]()
    layers = {layer.name: layer for layer in fusioncam.list_layers(model, (32, 32))}
    assert layers["blocks.1.norm1"].role == "automatic target"
    assert layers["blocks"].role == "last block of a stage"  # the Sequential returns its last block's tokens
    assert layers["norm"].role == "final norm"
    assert "1 prefix token(s) dropped + 4x4 patch grid" in layers["blocks.0"].note
    assert layers["blocks.0.norm1"].shape == ("N", 32, 4, 4)


# ----- a reshape function (pytorch-grad-cam's reshape_transform) ---------------------------------------------------

def reshape_transform(tensor, height=4, width=4):
    """pytorch-grad-cam's documented ViT reshape_transform."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


@pytest.mark.slow
def test_reshape_function_gives_the_map_autograd_gives(tmp_path):
    model = CASES["vit_class_token"][0]()
    result = fusioncam.export_torch(model, "blocks.1.norm1", tmp_path / "b", input_size=(32, 32),
                                    reshape=reshape_transform)
    assert "reshape function" in result.describe()
    reference, tap = tapped(model, "blocks.1.norm1", "tokens", 1, (4, 4))
    with torch.enable_grad():
        want = autograd_layer_gradients(reference, tap, IMAGES, [-1, 5])
    assert_parity(run_explain_graph(result.bundle.path, IMAGES, [-1, 5]), want)
    with pytest.raises(LayerError, match="must only rearrange"):
        fusioncam.export_torch(model, "blocks.1.norm1", tmp_path / "c", input_size=(32, 32),
                               reshape=lambda t: reshape_transform(t) * 2)


# ----- issue #13: 1x1 targets, several outputs, custom domains ----------------------------------------------------

def test_one_by_one_targets_are_marked_and_refused(tmp_path, capsys):
    path = save(tiny_classifier(), tmp_path / "m.onnx")
    pool = [layer for layer in fusioncam.list_layers(path) if layer.name == "pool"][0]
    assert "1x1 map: its CAM is constant" in pool.note
    with pytest.raises(LayerError, match="'pool' is a 1x1 map .* constant map"):
        fusioncam.export_onnx(path, tmp_path / "b", "pool")
    assert main(["layers", path]) == 0
    assert "1x1 map: its CAM is constant" in capsys.readouterr().out
    assert not (tmp_path / "b").exists()


def _two_heads(path) -> str:
    """tiny_classifier with a second head 'other' = 2 * logits + 1, as a second graph output."""
    model = tiny_classifier(extra_nodes=[helper.make_node("Mul", ["logits_raw", "two"], ["doubled"]),
                                         helper.make_node("Add", ["doubled", "one"], ["other"])])
    model.graph.initializer.extend([numpy_helper.from_array(np.array(2.0, np.float32), "two"),
                                    numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    model.graph.output.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, ["N", 5]))
    return save(model, path)


def test_several_outputs_say_which_is_used_and_can_be_chosen(tmp_path, capsys):
    path = _two_heads(tmp_path / "two.onnx")
    first = fusioncam.export_onnx(path, tmp_path / "a", "feat", input_size=(8, 8))
    assert "logits from output 'logits_raw' of 2 (logits_raw, other; the first; choose another" in first.describe()
    second = fusioncam.export_onnx(path, tmp_path / "b", "feat", input_size=(8, 8), output="other")
    assert "output 'other'" in second.describe() and "as requested" in second.describe()
    images = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    a, b = (run_explain_graph(r.bundle.path, images, [1, 2]) for r in (first, second))
    np.testing.assert_allclose(b["logits"], 2 * a["logits"] + 1, rtol=1e-6)
    np.testing.assert_allclose(b["gradients"], 2 * a["gradients"], rtol=1e-5, atol=1e-7)  # d(2y+1) = 2 dy
    with pytest.raises(ModelLoadError, match="no output 'nope'; its outputs are: logits_raw, other"):
        fusioncam.export_onnx(path, tmp_path / "c", "feat", output="nope")
    assert main(["export", path, "--layer", "feat", "--out", str(tmp_path / "d"), "--output", "other"]) == 0
    assert "output 'other'" in capsys.readouterr().out


def test_custom_domain_op_is_named(tmp_path):
    model = tiny_classifier()
    relu = next(node for node in model.graph.node if node.op_type == "Relu")
    relu.op_type, relu.domain = "FancyRelu", "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    path = save(model, tmp_path / "custom.onnx")
    with pytest.raises(ModelLoadError, match="op 'FancyRelu' from the custom domain 'com.example'"):
        fusioncam.export_onnx(path, tmp_path / "b")
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_hugging_face_output_objects_and_tuple_returning_modules(tmp_path):
    """A model returning ImageClassifierOutput is used through .logits; a target module returning a tuple gives its
    first tensor (Hugging Face Swin stages)."""
    model = CASES["hf_swin"][0]()
    result = fusioncam.export_torch(model, "swin.encoder.layers.1", tmp_path / "b", input_size=(32, 32))
    assert result.layer.shape[1:] == (32, 4, 4) and result.layer.layout.kind == TOKENS
    logits = run_explain_graph(result.bundle.path, IMAGES, [-1, 0])["logits"]
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(torch.from_numpy(IMAGES)).logits.numpy(), rtol=1e-4, atol=1e-5)
    assert onnx.load(str(result.bundle.path / "explain.onnx"), load_external_data=False).graph.output[1].name == \
        "activations"


@pytest.mark.slow
def test_a_model_holding_autograd_tensors_gets_a_clear_error(tmp_path):
    model = CASES["levit"][0]()
    model(torch.zeros(1, 3, 128, 128)).sum()  # timm's LeViT now caches attention biases that need gradients
    with pytest.raises(ModelLoadError, match="cannot be copied for export.*model.train\\(\\); model.eval\\(\\)"):
        fusioncam.export_torch(model, "stages.0", tmp_path / "b", input_size=(128, 128))
    model.train()
    model.eval()  # timm clears the caches: export works again
    assert fusioncam.export_torch(model, "stages.0", tmp_path / "c", input_size=(128, 128)).layer.shape[1:] == (128, 8, 8)
