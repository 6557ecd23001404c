"""FusionCAM (pytorch-grad-cam style) agrees with the Explainer on the bundle it exports, for every input form."""

import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fusioncam import Explainer, FusionCAM  # noqa: E402
from fusioncam.errors import LayerError, ModelLoadError  # noqa: E402

SIZE = (32, 32)


class TinyNet(torch.nn.Module):
    """A small CNN: two convolutions, global average pooling, a linear head over 5 classes."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        )
        self.head = torch.nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


class ClassifierOutputTarget:
    """The shape of pytorch-grad-cam's target objects: only `.category` matters here."""

    def __init__(self, category):
        self.category = category


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FUSIONCAM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 3, *SIZE)).astype(np.float32)


def _bundles(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "bundles").iterdir() if not p.name.startswith("."))


def test_module_cam_equals_explainer_on_the_exported_bundle(cache, model, images):
    cam = FusionCAM(model, target_layer="features.3", device="cpu")
    got = cam(input_tensor=torch.from_numpy(images))
    assert got.dtype == np.float32 and got.shape == (2, *SIZE)
    assert got.min() >= 0.0 and got.max() <= 1.0 and got.max() == 1.0

    bundles = _bundles(cache)
    assert len(bundles) == 1
    assert cam.explainer(SIZE).bundle.path == bundles[0]
    reference = Explainer(bundles[0], device="cpu").explain(images)
    np.testing.assert_allclose(got, reference.fusion, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(cam.last_explanation.classes, reference.classes)

    from_numpy = cam(input_tensor=images)
    np.testing.assert_array_equal(from_numpy, got)


def test_targets_as_ints_names_and_category_objects(cache, model, images):
    cam = FusionCAM(model, target_layer=[model.features[3]], device="cpu", class_names=list("abcde"))
    assert cam.last_explanation is None
    by_default = cam(input_tensor=images)
    top_classes = cam.last_explanation.classes.copy()
    other = [int((c + 1) % 5) for c in top_classes]

    by_objects = cam(input_tensor=images, targets=[ClassifierOutputTarget(c) for c in other])
    assert cam.last_explanation.classes.tolist() == other
    by_ints = cam(input_tensor=images, targets=other)
    by_names = cam(input_tensor=images, targets=["abcde"[c] for c in other])
    np.testing.assert_array_equal(by_objects, by_ints)
    np.testing.assert_array_equal(by_names, by_ints)
    assert not np.array_equal(by_objects, by_default)  # another class gives another map

    one_for_all = cam(input_tensor=images, targets=ClassifierOutputTarget(other[0]))
    assert cam.last_explanation.classes.tolist() == [other[0]] * 2
    np.testing.assert_array_equal(cam(input_tensor=images, targets=torch.tensor(top_classes)), by_default)
    assert one_for_all.shape == (2, *SIZE)


def test_export_happens_once_per_weights_and_size(cache, model, images):
    FusionCAM(model, "features.3", device="cpu")(input_tensor=images[:1])
    FusionCAM(model, "features.3", device="cpu")(input_tensor=images[:1])
    assert len(_bundles(cache)) == 1
    changed = TinyNet().eval()
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.head.bias.add_(1.0)
    FusionCAM(changed, "features.3", device="cpu")(input_tensor=images[:1])
    assert len(_bundles(cache)) == 2


def test_bundle_directory_and_onnx_file_models(cache, model, images, tmp_path):
    bundle = FusionCAM(model, "features.3", device="cpu").explainer(SIZE).bundle
    from_dir = FusionCAM(str(bundle.path), device="cpu")(input_tensor=images)
    reference = Explainer(bundle.path, device="cpu").explain(images).fusion
    np.testing.assert_allclose(from_dir, reference, rtol=0, atol=1e-6)

    onnx_path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(model, (torch.zeros(1, 3, *SIZE),), str(onnx_path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    from_onnx = FusionCAM(onnx_path, device="cpu")(input_tensor=images)
    assert from_onnx.shape == (2, *SIZE) and from_onnx.dtype == np.float32
    with pytest.raises(LayerError, match=r"explains layer 'features.3', not 'features.1'"):
        FusionCAM(str(bundle.path), "features.1", device="cpu")  # at construction, not at the first call
    named = FusionCAM(onnx_path, "/features/features.3/Relu_output_0", device="cpu")  # a tensor the graph computes
    np.testing.assert_allclose(named(input_tensor=images), from_onnx, rtol=0, atol=1e-6)  # the automatic one
    with pytest.raises(LayerError, match=r"unknown target layer 'nope': no tensor of that name in .*tiny\.onnx"):
        FusionCAM(onnx_path, "nope", device="cpu")


def test_clear_errors(cache, model):
    with pytest.raises(LayerError, match="target_layer is required"):
        FusionCAM(model)
    with pytest.raises(LayerError, match=r"unknown target layer 'featurez'.*Closest module paths: features"):
        FusionCAM(model, "featurez", device="cpu")  # at construction, not at the first call
    with pytest.raises(LayerError, match="not a submodule"):
        FusionCAM(model, torch.nn.ReLU())
    with pytest.raises(ModelLoadError, match="not found"):
        FusionCAM("no/such/model.onnx")


def test_other_class_names_are_another_export(cache, model, images):
    """Class names live in the bundle: a cached export with other names must not answer for these."""
    target = int(FusionCAM(model, "features.3", device="cpu", class_names=list("abcde")).explainer(SIZE)
                 .explain(images[:1]).classes[0])
    renamed = list("bcdea")  # the same names, rotated: the old bundle would map renamed[target] to target + 1
    cam = FusionCAM(model, "features.3", device="cpu", class_names=renamed)
    cam(input_tensor=images[:1], targets=[renamed[target]])
    assert cam.last_explanation.classes.tolist() == [target]
    assert len(_bundles(cache)) == 2
