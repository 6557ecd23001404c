"""Several methods share one explain pass, one Score-CAM sweep and their scorer batches, and give what each gives alone."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import fusioncam
from fusioncam.errors import InputError
from fusioncam.runtime.methods import METHODS
from fusioncam.runtime.methods.registry import REGISTRY
from tests.support.torch_reference import sample_model

SIZE = (32, 32)
BATCH = 16


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    model = sample_model("resnet18", seed=0)
    with torch.no_grad():
        model.fc.weight.mul_(20.0)
        model.fc.bias.mul_(20.0)
    out = tmp_path_factory.mktemp("rn") / "resnet18.fcam"
    fusioncam.export_torch(model, "layer3", out, input_size=SIZE)  # K=256 at 2x2: 32 groups of 8 channels
    return out


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(5).standard_normal((2, 3, *SIZE)).astype(np.float32)


def counting_explainer(bundle, batch_size: int = BATCH, **options):
    """An Explainer whose backend records each explain pass and each scorer run's row count."""
    explainer = fusioncam.Explainer(bundle, device="cpu", batch_size=batch_size, **options)
    backend = explainer.backend
    calls = {"explain": 0, "rows": []}
    explain, score_rows = backend.explain, backend.score_rows

    def counted_explain(*args):
        calls["explain"] += 1
        return explain(*args)

    def counted_score_rows(count, *inputs):
        calls["rows"].append(count)
        return score_rows(count, *inputs)

    backend.explain, backend.score_rows = counted_explain, counted_score_rows
    return explainer, calls


def batches(rows: int) -> int:
    return math.ceil(rows / BATCH)


@pytest.mark.slow
def test_all_methods_cost_one_explain_pass_one_sweep_and_shared_batches(bundle, images):
    explainer, calls = counting_explainer(bundle)
    explanation = explainer.explain(images, [-1, 3], methods=METHODS)
    # one shared explain pass; only FinerCAM adds its own passes (one per comparison class, the bundle has > 3 classes)
    extra = {name: method.extra_explain_passes for name, method in REGISTRY.items() if method.extra_explain_passes}
    assert extra == {"finercam": 3}
    assert calls["explain"] == 1 + sum(extra.values())
    without_finercam, without_calls = counting_explainer(bundle)
    without_finercam.explain(images, [-1, 3], methods=[m for m in METHODS if m != "finercam"])
    assert without_calls["explain"] == 1 and without_calls["rows"] == calls["rows"]
    sweep = int(explanation.forwards_run.sum())
    assert sweep + int(explanation.forwards_skipped.sum()) == 2 * 256  # one sweep, not one per method
    # Round 1: Fusion-CAM's x*L_den, the shared x*L_reg, Union-CAM's x*L_den, Group-CAM's blends and x_b, per image.
    first = 2 + 2 + 2 + int(explanation.group_forwards.sum()) + 2
    second = 2 + 2  # x*L_dr of Fusion-CAM and of Union-CAM
    assert explanation.timings["method_forwards_run"] == first + second
    assert sum(calls["rows"]) == sweep + first + second
    assert len(calls["rows"]) == batches(sweep) + batches(first) + batches(second)

    fusion_only, fusion_calls = counting_explainer(bundle)
    alone = fusion_only.explain(images, [-1, 3])
    assert alone.forwards_run.tolist() == explanation.forwards_run.tolist()
    assert sum(fusion_calls["rows"]) == sweep + 4 + 2


@pytest.mark.slow
def test_each_method_alone_equals_it_among_all(bundle, images):
    together = fusioncam.Explainer(bundle, device="cpu", batch_size=BATCH).explain(images, [-1, 3], methods=METHODS)
    separate = fusioncam.Explainer(bundle, device="cpu", batch_size=7)
    for method in METHODS:
        alone = separate.explain(images, [-1, 3], methods=[method])
        assert tuple(alone.maps) == (method,)
        np.testing.assert_allclose(alone.maps[method], together.maps[method], atol=1e-5, err_msg=method)
        if method == "unioncam":
            for key, value in alone.union_betas.items():
                np.testing.assert_allclose(value, together.union_betas[key], atol=1e-6, err_msg=key)
        if method == "groupcam":
            np.testing.assert_allclose(alone.group_scores, together.group_scores, atol=1e-6)


def test_gradient_methods_run_no_masked_forward(bundle, images):
    explainer, calls = counting_explainer(bundle)
    explanation = explainer.explain(images, methods=("xgradcam", "gradcam", "gradcam++"))
    assert calls == {"explain": 1, "rows": []}
    assert tuple(explanation.maps) == ("gradcam", "gradcam++", "xgradcam")  # canonical order
    assert np.array_equal(explanation.gradcam, explanation.maps["gradcam"])
    for name in ("fusion", "denoised", "scorecam", "combined", "betas", "degenerate", "forwards_run", "forwards_skipped",
                 "union_betas", "union_kept_combined", "group_scores", "group_forwards"):
        assert getattr(explanation, name) is None, name
    assert len(explanation) == 2 and explanation.beta_row(0) == {}
    for cam in explanation.maps.values():
        assert cam.dtype == np.float32 and cam.shape == (2, *SIZE) and cam.min() >= 0 and cam.max() <= 1


def test_group_cam_skips_constant_groups_exactly(bundle, images):
    explainer, calls = counting_explainer(bundle)
    fast = explainer.explain(images, methods="groupcam")
    full_explainer, full_calls = counting_explainer(bundle, skip_constant_channels=False)
    full = full_explainer.explain(images, methods="groupcam")
    groups = fast.group_scores.shape[1]
    assert full.group_forwards.tolist() == [groups, groups]
    assert sum(calls["rows"]) == int(fast.group_forwards.sum()) + 2 and sum(full_calls["rows"]) == 2 * groups + 2
    assert fast.scorecam is None and fast.forwards_run is None  # no sweep for Group-CAM
    np.testing.assert_allclose(fast.maps["groupcam"], full.maps["groupcam"], atol=1e-6)
    np.testing.assert_allclose(fast.group_scores, full.group_scores, atol=1e-6)


def test_unknown_methods_are_an_input_error_listing_the_valid_ones(bundle, images):
    explainer = fusioncam.Explainer(bundle, device="cpu")
    with pytest.raises(InputError, match=r"unknown method\(s\) gradcampp; choose from gradcam, gradcam\+\+, xgradcam, "
                                         r"scorecam, groupcam, unioncam, fusion"):
        explainer.explain(images, methods=("fusion", "gradcampp"))
    with pytest.raises(InputError, match="none given"):
        explainer.explain(images, methods=())


def test_cli_writes_every_chosen_method(bundle, tmp_path, capsys):
    import cv2

    from fusioncam.cli.main import main
    from fusioncam.report.pictures import PanelLayout, tile_size

    picture = tmp_path / "in" / "noise.png"
    picture.parent.mkdir()
    cv2.imwrite(str(picture), np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    out = tmp_path / "out"
    assert main(["explain", str(picture), "--model", str(bundle), "--out", str(out),
                 "--methods", "unioncam,gradcam++,groupcam"]) == 0
    capsys.readouterr()
    results = json.loads((out / "results.json").read_text())
    assert results["methods"] == ["gradcam++", "groupcam", "unioncam"]
    record = results["images"][0]
    assert set(record["union_betas"]) == {"b_den", "b_reg", "b_dr", "b0"}
    for tag in ("gradcampp", "groupcam", "unioncam"):
        assert np.load(out / f"noise_{tag}.npy").shape == SIZE
        assert cv2.imread(str(out / f"noise_{tag}_overlay.png")).shape == (40, 50, 3)
    # The panel: the image and the chosen methods only (no Fusion-CAM chosen: no Grad-CAM or Score-CAM tile).
    assert cv2.imread(str(out / "noise_panel.png")).shape[:2] == PanelLayout(*tile_size((40, 50)), 4).size
    page = (out / "index.html").read_text()
    for title in ("Grad-CAM++", "Group-CAM", "Union-CAM"):
        assert title in page
    assert "Score-CAM" not in page
