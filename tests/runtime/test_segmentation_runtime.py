"""Segmentation bundles keep the runtime's behaviours: batching does not change a map, constant channels are skipped
exactly, fast mode scores the k selected channels (against the eager reference over those channels), the float16
scorer stays close to float32, and classifier-only arguments are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusioncam import Explainer, export_torch_segmentation
from fusioncam.errors import InputError
from tests.support.segmentation_reference import segmentation_fusion_cam, segmentation_pass
from tests.support.segmentation_models import METHODS, SIZE, QuadrantNet, random_images, lraspp


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    model = lraspp()
    path = tmp_path_factory.mktemp("seg_runtime") / "lraspp.fcam"
    export_torch_segmentation(model, "backbone.12", path, input_size=SIZE, fp16_scorer=True)
    return model, "backbone.12", path


@pytest.mark.slow
def test_batch_size_does_not_change_the_maps(bundle) -> None:
    _, _, path = bundle
    images = random_images(2, seed=11)
    regions = ["predicted", (10, 4, 44, 40)]
    with Explainer(path, device="cpu", batch_size=7) as small, Explainer(path, device="cpu", batch_size=64) as large:
        a = small.explain(images, targets=[None, 2], regions=regions, methods=METHODS)
        b = large.explain(images, targets=[None, 2], regions=regions, methods=METHODS)
    for method in METHODS:
        assert np.abs(a.maps[method] - b.maps[method]).max() <= 1e-6, method


@pytest.mark.slow
def test_constant_channels_are_skipped_exactly(tmp_path) -> None:
    """Four channels of the known-answer network are dead (all zeros): no forward runs for them, same maps."""
    model = QuadrantNet().eval()
    with torch.no_grad():
        model.features.weight[4:8].neg_()  # the top-right quadrant's channels: relu of negative sums = 0
    export_torch_segmentation(model, "target", tmp_path / "q.fcam", input_size=(32, 32))
    image = (np.abs(np.random.default_rng(0).standard_normal((1, 3, 32, 32))) + 0.5).astype(np.float32)
    with Explainer(tmp_path / "q.fcam", device="cpu") as skip, \
            Explainer(tmp_path / "q.fcam", device="cpu", skip_constant_channels=False) as full:
        a = skip.explain(image, targets=1, regions="all", methods=("scorecam", "fusion", "groupcam"))
        b = full.explain(image, targets=1, regions="all", methods=("scorecam", "fusion", "groupcam"))
    assert a.forwards_skipped.tolist() == [4] and a.forwards_run.tolist() == [12] and b.forwards_run.tolist() == [16]
    for method in ("scorecam", "fusion", "groupcam"):
        assert np.abs(a.maps[method] - b.maps[method]).max() <= 1e-6, method


@pytest.mark.slow
def test_fast_mode_matches_the_reference_over_the_selected_channels(bundle) -> None:
    """max_channels=k scores the k channels with the largest relu(w_k) * mean(A_k); their softmax is Score-CAM's."""
    model, layer, path = bundle
    images = random_images(1, seed=5)
    k = 9
    with Explainer(path, device="cpu", max_channels=k) as explainer:
        result = explainer.explain(images, regions="all", methods=("scorecam", "fusion"))
    assert result.forwards_run.tolist() == [k]
    run = segmentation_pass(model, model.get_submodule(layer), images[0], -1, np.ones(SIZE, np.float32))
    try:
        contributions = torch.relu(run.G.mean(dim=(1, 2))) * run.A.mean(dim=(1, 2))
        chosen = np.argsort(-contributions.numpy(), kind="stable")[:k]
        want = segmentation_fusion_cam(run, channels=chosen)
    finally:
        run.close()
    assert np.abs(result.maps["scorecam"][0] - want["scorecam"]).max() <= 1e-4
    assert np.abs(result.maps["fusion"][0] - want["fusion"]).max() <= 1e-4


@pytest.mark.slow
def test_float16_scorer_stays_close_to_float32(bundle) -> None:
    """The gradient maps come from the float32 explain graph (identical); the scored ones move by float16 noise."""
    _, _, path = bundle
    images = random_images(2, seed=9)
    with Explainer(path, device="cpu") as exact, Explainer(path, device="cpu", precision="fp16") as half:
        a = exact.explain(images, targets=[1, None], regions=[(0, 0, 24, 48), "predicted"], methods=METHODS)
        b = half.explain(images, targets=[1, None], regions=[(0, 0, 24, 48), "predicted"], methods=METHODS)
    for method in ("gradcam", "gradcam++", "xgradcam"):
        assert np.abs(a.maps[method] - b.maps[method]).max() <= 1e-6, method
    # Group-CAM's d_g are differences of nearby probabilities, where float16's ~3 significant digits show: measured
    # r = 0.984 here (Score-CAM 1.000000, Fusion-CAM 0.999999, Union-CAM 0.999).
    floors = {"scorecam": 0.999, "unioncam": 0.995, "fusion": 0.999, "groupcam": 0.97}
    for method, floor in floors.items():
        r = np.corrcoef(a.maps[method].ravel(), b.maps[method].ravel())[0, 1]
        assert r >= floor, f"{method}: Pearson r {r:.4f} between float16 and float32 maps (floor {floor})"


def test_regions_on_a_classifier_bundle_are_refused(tmp_path) -> None:
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                     torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    from fusioncam import export_torch

    export_torch(classifier, "1", tmp_path / "c.fcam", input_size=(16, 16))
    with Explainer(tmp_path / "c.fcam", device="cpu") as explainer:
        with pytest.raises(InputError, match="regions= applies to segmentation bundles only"):
            explainer.explain(np.zeros((1, 3, 16, 16), np.float32), regions="all", methods="gradcam")


def test_more_images_than_classes_in_one_call_equal_each_alone(tmp_path) -> None:
    """Three images of a two-class model in one call (mixed regions): every map and P as when explained alone."""
    model = QuadrantNet().eval()
    images = (np.abs(np.random.default_rng(3).standard_normal((3, 3, 32, 32))) + 0.5).astype(np.float32)
    with torch.no_grad():
        mean = float(model.top_left_mean(torch.from_numpy(images[:1])))
    model.alpha, model.beta = 8.0 / mean, mean / 2
    export_torch_segmentation(model, "target", tmp_path / "q.fcam", input_size=(32, 32))
    regions = ["all", (0, 0, 20, 12), "predicted"]
    with Explainer(tmp_path / "q.fcam", device="cpu", batch_size=5) as explainer:
        together = explainer.explain(images, targets=1, regions=regions, methods=METHODS)
        for i in range(3):
            alone = explainer.explain(images[i : i + 1], targets=1, regions=[regions[i]], methods=METHODS)
            assert abs(float(together.probabilities[i]) - float(alone.probabilities[0])) <= 1e-7
            for method in METHODS:
                assert np.abs(together.maps[method][i] - alone.maps[method][0]).max() <= 1e-6, (i, method)
