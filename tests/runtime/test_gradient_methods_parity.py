"""HiResCAM, Grad-CAM element-wise, LayerCAM, Eigen-CAM, EigenGrad-CAM, KPCA-CAM and FinerCAM: fusioncam's maps equal
pytorch-grad-cam 1.5.7's own (the library itself: same weights, layer, images and targets; <= 1e-4, with
compat="pytorch-grad-cam" where the arithmetic differs), on a small CNN (fast) and torchvision's ResNet-18 (slow);
the default Eigen-CAM against an eager reference written from the paper; KPCA-CAM's projection against
scikit-learn's KernelPCA; FinerCAM's score derivatives against torch autograd of the library's FinerWeightedTarget."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam (grad-cam) is in the test extra")
sklearn_decomposition = pytest.importorskip("sklearn.decomposition")

import fusioncam  # noqa: E402
from fusioncam.errors import InputError  # noqa: E402
from fusioncam.kernels import numpy_kernels  # noqa: E402
from fusioncam.runtime.device_select import cuda_unavailable_reason  # noqa: E402
from fusioncam.runtime.methods import METHODS  # noqa: E402
from fusioncam.runtime.methods.finercam import comparison_classes, score_derivatives  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, FinerWeightedTarget  # noqa: E402
from tests.runtime.test_pytorch_grad_cam_compat import SmallNet, images, max_diff  # noqa: E402
from tests.support.autograd_reference import run_explain_graph  # noqa: E402
from tests.support.eigen_reference import eigen_cam_projection, gradcam_map_from_low  # noqa: E402

PGC = "pytorch-grad-cam"
LIBRARY_CLASSES = {"hirescam": "HiResCAM", "gradcam-elementwise": "GradCAMElementWise", "layercam": "LayerCAM",
                   "eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM", "kpcacam": "KPCA_CAM",
                   "finercam": "FinerCAM"}
NEW_METHODS = tuple(LIBRARY_CLASSES)
SAME_BY_DEFAULT = ("hirescam", "gradcam-elementwise", "layercam", "kpcacam", "finercam")
NO_GPU = cuda_unavailable_reason()


def library_maps(model, layer, x: np.ndarray, targets: list[int]) -> dict[str, np.ndarray]:
    """pytorch-grad-cam's maps [N, H, W] per method; FinerCAM with targets=None (each image's top class, compared with
    its three most similar classes, the library's default)."""
    maps = {}
    for method, name in LIBRARY_CLASSES.items():
        with getattr(pytorch_grad_cam, name)(model=model, target_layers=[layer]) as cam:
            wanted = None if method == "finercam" else [ClassifierOutputTarget(t) for t in targets]
            maps[method] = cam(input_tensor=torch.from_numpy(x), targets=wanted)
    return maps


def fusioncam_maps(bundle, x: np.ndarray, targets: list[int], compat, device: str = "cpu") -> dict[str, np.ndarray]:
    """fusioncam's maps of the seven methods (FinerCAM for the top classes, as the library's default)."""
    with fusioncam.Explainer(bundle, device=device, compat=compat) as explainer:
        maps = dict(explainer.explain(x, targets=targets, methods=NEW_METHODS[:-1]).maps)
        maps["finercam"] = explainer.explain(x, targets=None, methods=("finercam",)).maps["finercam"]
    return maps


def assert_parity(model, layer, bundle, x, targets) -> None:
    theirs = library_maps(model, layer, x, targets)
    ours = {compat: fusioncam_maps(bundle, x, targets, compat) for compat in (None, PGC)}
    for method in NEW_METHODS:
        assert ours[PGC][method].shape == theirs[method].shape
        assert max_diff(ours[PGC][method], theirs[method]) <= 1e-4, method
        assert theirs[method].max() > 0.99, method  # a real map (normalised to 1), not zeros on both sides
    for method in SAME_BY_DEFAULT:
        assert max_diff(ours[None][method], theirs[method]) <= 1e-4, method


def test_every_new_method_is_registered():
    assert set(NEW_METHODS) <= set(METHODS)


# ---------------------------------------------------------------- whole maps, against the library itself


@pytest.fixture(scope="module")
def small_net(tmp_path_factory):
    torch.manual_seed(0)
    model = SmallNet().eval()
    bundle = tmp_path_factory.mktemp("small") / "small.bundle"
    fusioncam.export_torch(model, "features.2", bundle, input_size=(32, 32))  # K=16 at 8x8: more positions than K
    return model, bundle


def test_maps_equal_pytorch_grad_cam_on_a_small_cnn(small_net):
    model, bundle = small_net
    assert_parity(model, model.features[2], bundle, images(3, 32, seed=4), [1, 3, 0])


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["layer3", "layer4"])  # K=256 at 6x6 and K=512 at 3x3: fewer positions than K
def test_maps_equal_pytorch_grad_cam_on_resnet18(resnet18, tmp_path, layer):
    bundle = tmp_path / f"resnet18_{layer}.bundle"
    fusioncam.export_torch(resnet18, layer, bundle, input_size=(96, 96))
    assert_parity(resnet18, getattr(resnet18, layer), bundle, images(2, 96, seed=3), [2, 7])


# ---------------------------------------------------------------- Eigen-CAM by its paper


def test_default_eigen_maps_equal_the_papers_projection(small_net):
    _, bundle = small_net
    x, targets = images(2, 32, seed=6), [4, 2]
    graph = run_explain_graph(bundle, x, targets)
    acts, grads = graph["activations"], graph["gradients"]
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        ours = explainer.explain(x, targets=targets, methods=("eigencam", "eigengradcam")).maps
    want_eigen = gradcam_map_from_low(eigen_cam_projection(acts, center=False), (32, 32))
    want_grad = gradcam_map_from_low(eigen_cam_projection(acts * grads, center=True), (32, 32))
    assert max_diff(ours["eigencam"], want_eigen) <= 1e-4
    assert max_diff(ours["eigengradcam"], want_grad) <= 1e-4
    # the paper's uncentred projection is not pytorch-grad-cam's centred one
    centred = gradcam_map_from_low(eigen_cam_projection(acts, center=True), (32, 32))
    assert max_diff(want_eigen, centred) > 1e-3


@pytest.mark.parametrize("shape", [(3, 5, 4, 4), (2, 40, 3, 2)])  # more positions than channels, and fewer
@pytest.mark.parametrize("center", [False, True])
def test_first_component_projection_equals_torch_svd(shape, center):
    maps = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    maps[0] += 2.0  # a dominant mean direction in one image
    ours = numpy_kernels.first_component_projection(maps, center)
    want = eigen_cam_projection(maps, center)
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("kernel", ["sigmoid", "rbf", "poly", "linear", "cosine"])
def test_kernel_pca_projection_equals_scikit_learn(kernel):
    rng = np.random.default_rng(2)
    maps = np.maximum(rng.standard_normal((2, 12, 5, 4)), 0)  # post-ReLU-like: K=12 channels, 20 positions
    ours = numpy_kernels.kernel_pca_projection(maps.astype(np.float32), kernel)
    for image, got in zip(maps, ours):
        positions = image.reshape(12, -1).T
        positions = positions - positions.mean(axis=0)
        want = sklearn_decomposition.KernelPCA(n_components=1, kernel=kernel).fit_transform(positions)[:, 0]
        np.testing.assert_allclose(got.reshape(-1), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_unknown_kpca_kernel_is_named():
    with pytest.raises(ValueError, match="'laplacian'.*sigmoid, rbf"):
        numpy_kernels.kernel_pca_projection(np.ones((1, 2, 2, 2), dtype=np.float32), "laplacian")


# ---------------------------------------------------------------- FinerCAM's weighted difference


def test_finercam_score_derivatives_equal_autograd_of_the_library_target():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((4, 10)) * 3
    targets = np.array([0, 9, 4, 4])
    comparisons = comparison_classes(logits, targets, 3)
    distance = np.abs(logits - logits[np.arange(4), targets][:, None])
    for row in range(4):  # the three classes nearest the target's logit, nearest first, never the target
        others = [c for c in np.argsort(distance[row]) if c != targets[row]]
        assert list(comparisons[row]) == others[:3]
    d_t, d_c = score_derivatives(logits, targets, comparisons)
    for row in range(4):
        y = torch.tensor(logits[row], dtype=torch.float64, requires_grad=True)
        score = FinerWeightedTarget(int(targets[row]), [int(c) for c in comparisons[row]], 1.0)(y)
        score.backward()
        grad = y.grad.numpy()
        np.testing.assert_allclose(d_t[row], grad[targets[row]], rtol=1e-10)
        np.testing.assert_allclose(d_c[row], grad[comparisons[row]], rtol=1e-10)
        rest = np.setdiff1d(np.arange(10), [targets[row], *comparisons[row]])
        # the terms left out: -1e-9 p_j T / D for every other class, through the 1e-9 in D = sum_c p_c + 1e-9 only
        p = torch.softmax(y.detach(), dim=0).numpy()
        mass = p[comparisons[row]].sum() + 1e-9
        np.testing.assert_allclose(grad[rest], -1e-9 * p[rest] * float(score.detach()) / mass, rtol=1e-6)


def test_finercam_on_a_segmentation_bundle_is_an_input_error(tmp_path):
    from tests.support.segmentation_models import QuadrantNet

    fusioncam.export_torch_segmentation(QuadrantNet().eval(), "target", tmp_path / "quadrant.fcam", input_size=(32, 32))
    with fusioncam.Explainer(tmp_path / "quadrant.fcam", device="cpu") as explainer:
        with pytest.raises(InputError, match="finercam.*classifier bundle"):
            explainer.explain(images(1, 32), methods=("finercam",))
        assert explainer.explain(images(1, 32), methods=("hirescam",)).maps["hirescam"].shape == (1, 32, 32)


# ---------------------------------------------------------------- CUDA: the same array code on CuPy


@pytest.mark.skipif(NO_GPU is not None, reason=f"no usable CUDA GPU: {NO_GPU}")
@pytest.mark.parametrize("compat", [None, PGC])
def test_cuda_maps_equal_the_cpu_ones(small_net, compat):
    _, bundle = small_net
    x, targets = images(3, 32, seed=4), [1, 3, 0]
    cpu = fusioncam_maps(bundle, x, targets, compat, "cpu")
    cuda = fusioncam_maps(bundle, x, targets, compat, "cuda")
    for method in NEW_METHODS:
        assert max_diff(cuda[method], cpu[method]) <= 1e-4, method


# ---------------------------------------------------------------- the command line reads the registry


def test_cli_writes_the_new_methods_maps(small_net, tmp_path, monkeypatch):
    import cv2

    from fusioncam.cli.main import main

    monkeypatch.setenv("FUSIONCAM_CACHE", str(tmp_path / "cache"))
    _, bundle = small_net
    picture = tmp_path / "in" / "noise.png"
    picture.parent.mkdir()
    cv2.imwrite(str(picture), np.random.default_rng(7).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    methods = ("gradcam-elementwise", "eigencam", "finercam")
    assert main(["explain", str(picture), "--model", str(bundle), "--out", str(tmp_path / "out"), "--device", "cpu",
                 "--methods", ",".join(methods)]) == 0
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        want = explainer.explain_files([picture], methods=methods)
    for method in methods:
        written = np.load(tmp_path / "out" / f"noise_{method}.npy")
        assert max_diff(written, want.maps[method][0]) <= 1e-6, method
        assert written.max() > 0.99, method
