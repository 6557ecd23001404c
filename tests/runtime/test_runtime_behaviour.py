"""Runtime behaviour: batch invariance, the degenerate cases of the algorithm page, and bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

import fusioncam
from fusioncam.errors import BundleError, DeviceError, InputError, NonFiniteError
from fusioncam.runtime.device_select import cuda_unavailable_reason
from tests.support.parity import assert_matches_reference
from tests.support.torch_reference import reference_fusion_cam, sample_model

SIZE = (64, 64)


@pytest.fixture(scope="module")
def resnet_bundle(tmp_path_factory):
    model = sample_model("resnet18", seed=0)
    out = tmp_path_factory.mktemp("rn") / "resnet18.fcam"
    fusioncam.export_torch(model, "layer3", out, input_size=SIZE)  # K=256 at 4x4: fewer forwards, same code paths
    return model, out


def random_images(n: int, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, *SIZE)).astype(np.float32)


BATCH_INVARIANCE_TARGETS = [2, -1, 9]


@pytest.fixture(scope="module")
def explained_alone(resnet_bundle) -> list:
    """Each of the three images explained on its own (batch_size 64): the same for every batch size compared."""
    _, bundle = resnet_bundle
    images = random_images(3)
    alone = fusioncam.Explainer(bundle, device="cpu", batch_size=64)
    return [alone.explain(images[i : i + 1], BATCH_INVARIANCE_TARGETS[i]) for i in range(3)]


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 7, 100])
def test_batch_invariance(resnet_bundle, explained_alone, batch_size):
    _, bundle = resnet_bundle
    images = random_images(3)
    together = fusioncam.Explainer(bundle, device="cpu", batch_size=batch_size).explain(images,
                                                                                        BATCH_INVARIANCE_TARGETS)
    for i, single in enumerate(explained_alone):
        for key in ("fusion", "gradcam", "denoised", "scorecam", "combined"):
            np.testing.assert_allclose(getattr(together, key)[i], getattr(single, key)[0], atol=1e-5, err_msg=key)
        for key in together.betas:
            assert abs(together.betas[key][i] - single.betas[key][0]) <= 1e-5


class HeadOnly(torch.nn.Module):
    """conv -> relu -> pool -> linear, with knobs to build each degenerate case of the algorithm page."""

    def __init__(self, conv_scale: float = 1.0, logit_scale: float = 1.0, constant_logits: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU())
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(6, 4)
        with torch.no_grad():
            self.features[0].weight.mul_(conv_scale)
            self.features[0].bias.mul_(conv_scale)
            self.fc.weight.mul_(logit_scale)
        self.constant_logits = constant_logits

    def forward(self, x):
        logits = self.fc(torch.flatten(self.pool(self.features(x)), 1))
        return logits * 0.0 + torch.arange(4.0) if self.constant_logits else logits


def explain_and_reference(tmp_path, model: torch.nn.Module, seed: int = 0):
    fusioncam.export_torch(model, "features", tmp_path / "m.fcam", input_size=(16, 16))
    image = np.random.default_rng(seed).standard_normal((1, 3, 16, 16)).astype(np.float32)
    explanation = fusioncam.Explainer(tmp_path / "m.fcam", device="cpu").explain(image)
    reference = reference_fusion_cam(model, model.features, torch.from_numpy(image[0]))
    assert_matches_reference(explanation, 0, reference)
    for key in ("fusion", "gradcam", "denoised", "scorecam", "combined"):
        assert np.isfinite(getattr(explanation, key)).all()
    return explanation


def test_degenerate_beta_pair_falls_back_to_half_and_is_flagged(tmp_path):
    explanation = explain_and_reference(tmp_path, HeadOnly(constant_logits=True))
    assert explanation.degenerate[0]
    assert explanation.betas["b_den"][0] == 0.5 and explanation.betas["b_reg"][0] == 0.5


def test_all_channels_constant_give_zero_maps_and_no_forwards(tmp_path):
    explanation = explain_and_reference(tmp_path, HeadOnly(conv_scale=0.0))
    assert explanation.forwards_run[0] == 0 and explanation.forwards_skipped[0] == 6
    assert not explanation.gradcam.any() and not explanation.scorecam.any()


def test_overflowing_scores_use_the_stable_softmax(tmp_path):
    explanation = explain_and_reference(tmp_path, HeadOnly(logit_scale=1e4))
    assert explanation.scorecam.max() == pytest.approx(1.0)


@pytest.mark.slow
def test_skipping_constant_channels_is_exact(resnet_bundle):
    _, bundle = resnet_bundle
    images = random_images(2, seed=11)
    fast = fusioncam.Explainer(bundle, device="cpu").explain(images)
    full = fusioncam.Explainer(bundle, device="cpu", skip_constant_channels=False).explain(images)
    assert full.forwards_skipped.sum() == 0 and full.forwards_run.sum() == 2 * 256
    assert fast.forwards_run.sum() + fast.forwards_skipped.sum() == 2 * 256
    for key in ("fusion", "gradcam", "scorecam", "combined"):
        np.testing.assert_allclose(getattr(fast, key), getattr(full, key), atol=1e-6, err_msg=key)


def test_nonfinite_input_names_the_image(resnet_bundle):
    _, bundle = resnet_bundle
    images = random_images(3)
    images[1, 0, 3, 3] = np.nan
    with pytest.raises(NonFiniteError, match=r"of: image 1\."):
        fusioncam.Explainer(bundle, device="cpu").explain(images)


@pytest.mark.parametrize("images,message", [
    (np.zeros((3, *SIZE), np.float32), r"expected a batch \[N,3,H,W\]"),
    (np.zeros((1, 3, *SIZE), np.uint8), "dtype uint8"),
    (np.zeros((1, 4, *SIZE), np.float32), "4 channels"),
    (np.zeros((1, *SIZE, 3), np.float32), "NHWC"),
    (np.zeros((1, 3, 32, 32), np.float32), "32x32 but the bundle was exported for 64x64"),
])
@pytest.mark.slow
def test_bad_images(resnet_bundle, images, message):
    with pytest.raises(InputError, match=message):
        fusioncam.Explainer(resnet_bundle[1], device="cpu").explain(images)


def test_bad_targets(resnet_bundle):
    explainer = fusioncam.Explainer(resnet_bundle[1], device="cpu")
    with pytest.raises(InputError, match=r"target class 1000 for all images is out of range.*0\.\.999"):
        explainer.explain(random_images(1), 1000)
    with pytest.raises(InputError, match="2 targets given for 3 images"):
        explainer.explain(random_images(3), [1, 2])
    with pytest.raises(InputError, match="unknown class name 'tabby cat'"):
        explainer.explain(random_images(1), "tabby cat")


@pytest.mark.parametrize("edited", ["scorer.onnx", "weights.bin"])
def test_bundle_with_missing_or_edited_file(resnet_bundle, tmp_path, edited):
    copy = tmp_path / "copy.fcam"
    shutil.copytree(resnet_bundle[1], copy)
    data = bytearray((copy / edited).read_bytes())
    data[-1] ^= 1  # one bit of the last weight (or of the graph), same length
    (copy / edited).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{edited} was changed after export"):
        fusioncam.Explainer(copy, device="cpu")
    (copy / "explain.onnx").unlink()
    with pytest.raises(BundleError, match="missing explain.onnx"):
        fusioncam.Explainer(copy, device="cpu")
    (copy / "manifest.json").write_text(json.dumps({"nonsense": 1}))
    with pytest.raises(BundleError, match="not a valid fusioncam manifest"):
        fusioncam.Explainer(copy, device="cpu")
    with pytest.raises(BundleError, match="does not exist"):
        fusioncam.Explainer(tmp_path / "nowhere.fcam", device="cpu")


@pytest.mark.skipif(cuda_unavailable_reason() is None, reason="a usable GPU is present: the no-GPU error cannot be shown")
def test_cuda_without_gpu_is_a_clear_error(resnet_bundle):
    with pytest.raises(DeviceError, match="device 'cuda' requested but CUDA is not usable"):
        fusioncam.Explainer(resnet_bundle[1], device="cuda")
    assert fusioncam.Explainer(resnet_bundle[1], device="auto").device.kind == "cpu"


@pytest.mark.slow
def test_on_batch_reports_every_scorer_batch_of_the_sweep(resnet_bundle):
    images = random_images(2)
    # The sweep's rows, counted here: one per (image, non-constant channel) of the explain graph's activations
    # (4x4 -> 64x64 bilinear: a channel's mask is constant exactly when its low-resolution map is).
    session = ort.InferenceSession(str(resnet_bundle[1] / "explain.onnx"), providers=["CPUExecutionProvider"])
    (acts,) = session.run(["activations"], {"input": images, "target": np.full(2, -1, dtype=np.int64)})
    sweep_rows = int((acts.max(axis=(2, 3)) > acts.min(axis=(2, 3))).sum())
    assert 50 < sweep_rows <= 2 * 256 and sweep_rows % 50  # several full batches and a remainder
    sweep_batches = -(-sweep_rows // 50)

    calls = []
    explainer = fusioncam.Explainer(resnet_bundle[1], device="cpu", batch_size=50)
    score_rows = explainer.backend.score_rows

    def counted_score_rows(count, *inputs):  # every scorer run, in order with the on_batch reports
        calls.append(("rows", count))
        return score_rows(count, *inputs)

    explainer.backend.score_rows = counted_score_rows
    explanation = explainer.explain(images, on_batch=lambda done, total: calls.append((done, total)))
    batches = -(-int(explanation.forwards_run.sum()) // 50)
    reports = [call for call in calls if call[0] != "rows"]
    assert reports == [(i, batches) for i in range(1, batches + 1)]
    assert batches == sweep_batches
    # Each sweep run is followed by its report; then Fusion-CAM's two unreported rounds (x*L_den with x*L_reg, x*L_dr).
    sweep = [("rows", min(50, sweep_rows - 50 * i)) for i in range(sweep_batches)]
    expected = [call for i, run in enumerate(sweep, 1) for call in (run, (i, sweep_batches))]
    assert calls == expected + [("rows", 4), ("rows", 2)]


def test_progress_bar_shows_scorer_batches_of_a_slow_image():
    import io

    from fusioncam.progress import ProgressBar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    bar = ProgressBar(3, stream)
    bar.batch_reporter("cat.jpg", started=0.0)(4, 9)  # started long ago: past the one-second threshold
    assert "cat.jpg (scorer batch 4/9)" in stream.getvalue()
    quiet = Terminal()
    ProgressBar(3, quiet).batch_reporter("cat.jpg", started=float("inf"))(4, 9)  # not slow yet: nothing drawn
    assert quiet.getvalue() == ""


@pytest.mark.slow
def test_warm_up_leaves_explanations_unchanged(resnet_bundle):
    """warm_up writes the scorer buffer and runs both graphs; a later explanation must not see any of it."""
    _, bundle = resnet_bundle
    images = random_images(2, seed=11)
    cold = fusioncam.Explainer(bundle, device="cpu", batch_size=7).explain(images)
    warm_explainer = fusioncam.Explainer(bundle, device="cpu", batch_size=7)
    assert warm_explainer.warm_up() is warm_explainer
    warm = warm_explainer.explain(images)
    for key in ("fusion", "gradcam", "scorecam"):
        np.testing.assert_array_equal(getattr(warm, key), getattr(cold, key), err_msg=key)
