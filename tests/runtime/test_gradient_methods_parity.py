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
from fusioncam.kernels import numpy_kernels  # noqa: E402
from fusioncam.runtime.device_select import cuda_unavailable_reason  # noqa: E402
from fusioncam.runtime.methods import METHODS  # noqa: E402
from fusioncam.runtime.methods.finercam import comparison_classes, score_derivatives  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, FinerWeightedTarget  # noqa: E402
from tests.support.autograd_reference import run_explain_graph  # noqa: E402
from tests.support.eigen_reference import eigen_cam_projection, gradcam_map_from_low  # noqa: E402
from tests.support.small_cnn import SmallNet, images, max_diff  # noqa: E402

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


def test_fixed_regions_give_the_predicted_weights_back_through_the_area_resize():
    """A "predicted" row becomes w spread by nearest neighbour; the graph's area resize (F.interpolate(mode="area"))
    gives w back exactly when the output size divides the input size, and not otherwise (then FinerCAM refuses)."""
    from fusioncam.runtime.methods.comparison_passes import fixed_regions

    rng = np.random.default_rng(9)
    for out_hw, exact in (((8, 6), True), ((7, 5), False)):
        weights = (rng.random((2, *out_hw)) > 0.5).astype(np.float32)
        regions = np.zeros((2, 16, 12), dtype=np.float32)
        regions[0] = -1.0  # predicted
        regions[1, 2:9, 3:7] = 1.0  # explicit: kept as given
        fixed = fixed_regions(regions, weights)
        np.testing.assert_array_equal(fixed[1], regions[1])
        back = torch.nn.functional.interpolate(torch.from_numpy(fixed[:1, None]), size=out_hw, mode="area")[0, 0]
        assert np.array_equal(back.numpy(), weights[0]) == exact


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


# ---------------------------------------------------------------- FinerCAM on a segmentation bundle


def torch_finercam_on_a_region(model, layer, x: np.ndarray, weights: np.ndarray, target: int,
                               comparisons) -> np.ndarray:
    """The eager reference: torch autograd of FinerWeightedTarget over the region means sum_ij w y_l / sum_ij w of the
    model's class scores (w fixed), Grad-CAM weights of dT/dA, norm(up(relu(sum_k w_k A_k)))."""
    stored = {}
    handle = layer.register_forward_hook(lambda module, inputs, output: stored.update(acts=output))
    try:
        out = model(torch.from_numpy(x))["out"][0]
    finally:
        handle.remove()
    region = torch.from_numpy(weights.astype(np.float32))
    scores = (out * region).sum(dim=(1, 2)) / region.sum()
    score = FinerWeightedTarget(int(target), [int(c) for c in comparisons], 1.0)(scores)
    (grads,) = torch.autograd.grad(score, stored["acts"])
    low = (grads.mean(dim=(2, 3), keepdim=True) * stored["acts"]).sum(dim=1).detach().numpy()
    return gradcam_map_from_low(low, x.shape[2:])[0]


@pytest.fixture(scope="module")
def lraspp_bundle(tmp_path_factory):
    from tests.support.segmentation_models import SIZE, lraspp

    model = lraspp(classes=6)
    bundle = tmp_path_factory.mktemp("lraspp") / "lraspp.fcam"
    fusioncam.export_torch_segmentation(model, "backbone.12", bundle, input_size=SIZE)
    return model, bundle


@pytest.mark.slow  # LRASPP's export: about 8 s on the loaded 2-core machine
@pytest.mark.parametrize("region", ["predicted", (4, 6, 40, 30)])
def test_finercam_on_a_segmentation_bundle_equals_autograd_over_the_region(lraspp_bundle, region):
    from tests.support.segmentation_models import random_images

    model, bundle = lraspp_bundle
    x = random_images(3, seed=2)
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        result = explainer.explain(x, targets=[2, None, 4], methods=("finercam",), regions=[region] * 3)
    comparisons = result.method("finercam").facts["comparison_classes"]
    assert comparisons.shape == (3, 3)
    nonzero = 0
    for i in range(3):
        assert int(result.classes[i]) not in comparisons[i].tolist()
        want = torch_finercam_on_a_region(model, model.get_submodule("backbone.12"), x[i:i + 1],
                                          result.region_weights[i], result.classes[i], comparisons[i])
        nonzero += int(want.max() > 0.99)  # a random model's map may be 0 everywhere (relu of a negative map)
        assert max_diff(result.maps["finercam"][i], want) <= 1e-4, i
    assert nonzero >= 1


@pytest.mark.skipif(NO_GPU is not None, reason=f"no usable CUDA GPU: {NO_GPU}")
def test_cuda_projection_kernels_equal_the_numpy_ones():
    import cupy as cp

    from fusioncam.kernels import cuda_kernels
    from fusioncam.kernels.pytorch_grad_cam_math import lapack_centered_projection

    gpu = cuda_kernels()
    rng = np.random.default_rng(11)
    acts = np.maximum(rng.standard_normal((3, 20, 5, 6)), 0).astype(np.float32)  # more positions than channels
    grads = rng.standard_normal((3, 20, 5, 6)).astype(np.float32)
    wide = rng.standard_normal((2, 64, 3, 3)).astype(np.float32)  # fewer positions than channels
    for name in ("hirescam_map", "elementwise_gradcam_map", "layercam_map"):
        np.testing.assert_allclose(cp.asnumpy(getattr(gpu, name)(cp.asarray(acts), cp.asarray(grads))),
                                   getattr(numpy_kernels, name)(acts, grads), rtol=1e-5, atol=1e-6, err_msg=name)
    for maps in (acts, wide):
        for center in (False, True):
            want = numpy_kernels.first_component_projection(maps, center)
            got = cp.asnumpy(gpu.first_component_projection(cp.asarray(maps), center))
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
        for kernel in ("sigmoid", "rbf", "linear"):
            want = numpy_kernels.kernel_pca_projection(maps, kernel)
            got = cp.asnumpy(gpu.kernel_pca_projection(cp.asarray(maps), kernel))
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
        np.testing.assert_array_equal(cp.asnumpy(lapack_centered_projection(cp.asarray(maps))),
                                      lapack_centered_projection(maps))
