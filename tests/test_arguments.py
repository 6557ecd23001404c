"""One error policy at every public entry point: wrong types and values are an InputError naming the argument, the
value and what is accepted; torch tensors work wherever NumPy arrays do; one path works where a list is expected;
sizes that cannot fit in memory are refused before anything is allocated."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import fusioncam
from fusioncam import arguments
from fusioncam.cli.main import main
from fusioncam.errors import InputError
from fusioncam.memory_budget import check_batch_fits, check_input_size_fits
from tests.support.tiny_models import save, tiny_classifier

SIZE = 8


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """A tiny ONNX classifier (8x8 inputs, 4 channels, 5 classes) exported once."""
    folder = tmp_path_factory.mktemp("tiny")
    model_path = save(tiny_classifier(size=SIZE), folder / "tiny.onnx")
    out = folder / "tiny.fcam"
    fusioncam.export_onnx(model_path, out)
    return model_path, out


@pytest.fixture(scope="module")
def explainer(tiny_bundle):
    return fusioncam.Explainer(tiny_bundle[1], device="cpu", batch_size=4)


def _images(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


@pytest.mark.parametrize("kwargs, words", [
    ({"device": None}, ["device", "None", "string"]),
    ({"batch_size": "abc"}, ["batch_size", "'abc'", "integer >= 1"]),
    ({"batch_size": 0}, ["batch_size", "0", "integer >= 1"]),
    ({"batch_size": True}, ["batch_size", "True", "integer"]),
    ({"theta": "x"}, ["theta", "'x'", "number in [0.0, 100.0]"]),
    ({"theta": float("nan")}, ["theta", "nan", "finite"]),
    ({"theta": 101}, ["theta", "101", "[0.0, 100.0]"]),
    ({"precision": 16}, ["precision", "16", "string"]),
    ({"skip_constant_channels": "no"}, ["skip_constant_channels", "'no'", "True or False"]),
    ({"max_channels": 2.5}, ["max_channels", "2.5", "integer"]),
    ({"cuda_options": ["prefer_nhwc"]}, ["cuda_options", "dict"]),
])
def test_explainer_constructor_names_the_bad_argument(tiny_bundle, kwargs, words):
    with pytest.raises(InputError) as caught:
        fusioncam.Explainer(tiny_bundle[1], **{"device": "cpu", **kwargs})
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize("bundle", [None, 5, "", b"bundle", ["a"]])
def test_explainer_needs_a_bundle_path(bundle):
    with pytest.raises(InputError, match=r"bundle must be a bundle directory .* got "):
        fusioncam.Explainer(bundle)


@pytest.mark.parametrize("kwargs, words", [
    ({"methods": None}, ["methods", "None", "method name"]),
    ({"methods": 3}, ["methods", "3 (int)"]),
    ({"methods": [None]}, ["methods[0]", "None"]),
    ({"methods": []}, ["methods", "none given"]),
    ({"on_batch": "print"}, ["on_batch", "callable"]),
])
def test_explain_names_the_bad_argument(explainer, kwargs, words):
    with pytest.raises(InputError) as caught:
        explainer.explain(_images(), **kwargs)
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize("images", [None, "images.npy", {"x": 1}, [["a", "b"]]])
def test_explain_refuses_what_is_not_an_array(explainer, images):
    with pytest.raises(InputError, match="images"):
        explainer.explain(images)


def test_torch_tensors_give_the_same_maps_as_numpy(explainer):
    images = _images(3, seed=4)
    methods = ("gradcam", "scorecam", "fusion")
    expected = explainer.explain(images, targets=[1, 0, 4], methods=methods)
    tensor = torch.from_numpy(images.copy()).requires_grad_(True)  # with grad: detach() is needed
    got = explainer.explain(tensor, targets=torch.tensor([1, 0, 4]), methods=methods)
    for method in methods:
        np.testing.assert_array_equal(got.maps[method], expected.maps[method])
    np.testing.assert_array_equal(got.classes, [1, 0, 4])


def test_grad_cam_wrapper_takes_torch_and_gives_the_explainer_maps(tiny_bundle, explainer):
    images = _images(2, seed=7)
    with fusioncam.FusionCAM(str(tiny_bundle[1]), device="cpu", batch_size=4) as cam:
        got = cam(input_tensor=torch.from_numpy(images.copy()), targets=None)
    np.testing.assert_array_equal(got, explainer.explain(images).fusion)


def test_grad_cam_wrapper_checks_its_arguments(tiny_bundle):
    with pytest.raises(InputError, match=r"batch_size must be an integer >= 1 or None; got 'big' \(str\)"):
        fusioncam.FusionCAM(str(tiny_bundle[1]), batch_size="big")
    with pytest.raises(InputError, match="input_tensor must be"):
        fusioncam.FusionCAM(str(tiny_bundle[1]), device="cpu")(input_tensor=None)


def _write_png(path, seed: int) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return rgb


def test_explain_files_takes_one_path_as_a_list_of_one(explainer, tmp_path):
    _write_png(tmp_path / "cat.png", 1)
    one = explainer.explain_files(str(tmp_path / "cat.png"))
    listed = explainer.explain_files([tmp_path / "cat.png"])
    np.testing.assert_array_equal(one.fusion, listed.fusion)
    assert one.fusion.shape == (1, SIZE, SIZE)
    with pytest.raises(InputError, match=r"paths\[1\] must be a path"):
        explainer.explain_files([tmp_path / "cat.png", None])
    with pytest.raises(InputError, match="paths must be a path or a non-empty list of paths"):
        explainer.explain_files([])


def test_batch_size_beyond_memory_is_refused_with_the_largest_that_fits(tiny_bundle):
    with pytest.raises(InputError) as caught:
        fusioncam.Explainer(tiny_bundle[1], device="cpu", batch_size=10**15)
    message = str(caught.value)
    assert "batch_size 1000000000000000 does not fit" in message and "the largest batch_size that fits is" in message


def test_batch_budget_arithmetic():
    # 16 bytes per pixel per row at 224x224 = 802816 bytes; half of 1 GiB holds 668 rows
    check_batch_fits(668, (224, 224), free=2**30)
    with pytest.raises(InputError, match="the largest batch_size that fits is 668 "):
        check_batch_fits(669, (224, 224), free=2**30)
    check_input_size_fits((4096, 4096), free=2**30)  # 2 images x 16 B x 16.8 M pixels = 512 MiB: just fits
    with pytest.raises(InputError, match="input_size 4096x4097 does not fit"):
        check_input_size_fits((4096, 4097), free=2**30)


def test_cli_batch_beyond_memory_is_one_line_and_exit_2(tiny_bundle, tmp_path, capsys):
    _write_png(tmp_path / "a.png", 2)
    code = main(["explain", str(tmp_path / "a.png"), "--model", str(tiny_bundle[1]), "--device", "cpu",
                 "--batch", "100000000000000", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "batch_size 100000000000000 does not fit" in err and "Traceback" not in err


@pytest.mark.parametrize("size", [("100000", "100000"), ("0", "8")])
def test_cli_export_input_size_refused_before_allocating(tiny_bundle, tmp_path, capsys, size):
    code = main(["export", tiny_bundle[0], "--out", str(tmp_path / "b.fcam"), "--input-size", *size])
    err = capsys.readouterr().err
    assert code == 2 and "input_size" in err and "Traceback" not in err
    assert not (tmp_path / "b.fcam").exists()


@pytest.mark.parametrize("call, words", [
    (lambda m: fusioncam.export_onnx(None, "out.fcam"), ["model_path", "None"]),
    (lambda m: fusioncam.export_onnx(m, None), ["out", "None"]),
    (lambda m: fusioncam.export_onnx(m, "o.fcam", 7), ["target_layer", "7 (int)"]),
    (lambda m: fusioncam.export_onnx(m, "o.fcam", input_size="224"), ["input_size", "'224'", "(H, W)"]),
    (lambda m: fusioncam.export_onnx(m, "o.fcam", input_size=(100000, 100000)), ["input_size 100000x100000",
                                                                                 "largest that fits"]),
    (lambda m: fusioncam.export_onnx(m, "o.fcam", mean=(0.5, 0.5)), ["mean", "three finite numbers"]),
    (lambda m: fusioncam.export_onnx(m, "o.fcam", std=(1, 0, 1)), ["std", "all > 0"]),
    (lambda m: fusioncam.export_onnx(m, "o.fcam", class_names="cat"), ["class_names", "list of strings"]),
    (lambda m: fusioncam.export_onnx(m, "o.fcam", fp16_scorer="yes"), ["fp16_scorer", "True or False"]),
    (lambda m: fusioncam.export_torch(torch.nn.Conv2d(3, 3, 1), "x", "o.fcam", input_size="224"),
     ["input_size", "'224'"]),
    (lambda m: fusioncam.export_torch(torch.nn.Conv2d(3, 3, 1), 4, "o.fcam"), ["target_layer", "4 (int)"]),
    (lambda m: fusioncam.list_layers(5), ["model", "5 (int)", "torch.nn.Module"]),
    (lambda m: fusioncam.list_layers(m, input_size=[8]), ["input_size", "[8]"]),
])
def test_export_entry_points_name_the_bad_argument(tiny_bundle, tmp_path, monkeypatch, call, words):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as caught:
        call(tiny_bundle[0])
    for word in words:
        assert word in str(caught.value)
    assert not (tmp_path / "o.fcam").exists()


@pytest.mark.parametrize("kwargs, words", [
    ({"alpha": "x"}, ["alpha", "'x'", "[0.0, 1.0]"]),
    ({"alpha": 1.5}, ["alpha", "1.5"]),
    ({"colormap": None}, ["colormap", "None"]),
    ({"max_side": 0}, ["max_side", "0"]),
])
def test_overlay_names_the_bad_argument(kwargs, words):
    with pytest.raises(InputError) as caught:
        fusioncam.overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2)), **kwargs)
    for word in words:
        assert word in str(caught.value)


def test_overlay_takes_a_torch_cam_like_its_numpy_twin():
    image = np.random.default_rng(3).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    cam = np.random.default_rng(4).random((3, 2)).astype(np.float32)
    np.testing.assert_array_equal(fusioncam.overlay(image, torch.from_numpy(cam)), fusioncam.overlay(image, cam))


def test_checkers_return_plain_values():
    assert arguments.integer("k", np.int64(3), minimum=1) == 3 and type(arguments.integer("k", np.int64(3))) is int
    assert arguments.size_pair("s", [np.int32(2), 3]) == (2, 3)
    assert arguments.path_list("p", "a.png") == ["a.png"]
    assert arguments.number("t", np.float32(0.5), 0, 1) == 0.5
    with pytest.raises(InputError, match=r"got 'xxxxx.*\.\.\. \(str\)"):
        arguments.integer("k", "x" * 200)


def test_gpu_batch_budget_names_the_gpu():
    with pytest.raises(InputError, match=r"and GPU 1 has 1\.0 GiB free; the largest batch_size that fits is 668 "):
        check_batch_fits(10**6, (224, 224), "cuda", 1, free=2**30)


def test_overlay_and_preprocess_take_torch_images_like_numpy():
    from fusioncam.images import preprocess

    image = np.random.default_rng(5).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    cam = np.random.default_rng(6).random((3, 3)).astype(np.float32)
    np.testing.assert_array_equal(fusioncam.overlay(torch.from_numpy(image), cam), fusioncam.overlay(image, cam))
    np.testing.assert_array_equal(preprocess(torch.from_numpy(image), (4, 5)), preprocess(image, (4, 5)))
