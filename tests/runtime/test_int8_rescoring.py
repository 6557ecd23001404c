"""Explainer(precision="int8", int8_rescore=m) (runtime/int8_sweep.py): the Score-CAM sweep runs in INT8, then each
image's m channels with the highest INT8 scores are rescored by the float32 scorer. Checked against the float32
and the all-INT8 sweeps computed independently from the same activations: the rescored channels carry the float32
scorer's scores, the others the INT8 scores moved by the mean float32 - INT8 difference of the rescored ones;
z0 and the probes are the float32 scorer's; rescoring every channel gives the float32 explainer's maps."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fusioncam  # noqa: E402
from fusioncam.errors import InputError  # noqa: E402
from fusioncam.runtime.methods import engine as engine_module  # noqa: E402
from fusioncam.runtime.score_sweep import score_cam_sweep  # noqa: E402
from fusioncam.runtime.stage_clock import NullClock  # noqa: E402
from tests.support.small_cnn import SMALL_CHANNELS, SMALL_SIZE, images, small_bundle  # noqa: E402

SIZE = SMALL_SIZE
CHANNELS = SMALL_CHANNELS


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return small_bundle(tmp_path_factory.mktemp("int8-rescore"), int8_scorer=True)


def _recorded_sweep(explainer, x, monkeypatch):
    """Explain x with Fusion-CAM and return (the explanation, the int8 sweep's arguments, its result)."""
    calls = []
    original = engine_module.int8_score_sweep

    def recording(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    monkeypatch.setattr(engine_module, "int8_score_sweep", recording)
    explanation = explainer.explain(x, methods=("fusion", "scorecam"))
    assert len(calls) == 1
    return explanation, calls[0]


def _sweep_scores(explainer, args, kwargs, baseline) -> np.ndarray:
    """The plain sweep's scores with `explainer`'s scorer over the recorded activations and masks."""
    _, images_, acts, mins, maxs, targets = args[:6]
    with explainer.scorer.in_use("test"):
        sweep = score_cam_sweep(explainer.scorer, images_, acts, mins, maxs, targets, baseline, NullClock(),
                                skip_constant=kwargs["skip_constant"], masked_inputs=kwargs["masked_inputs"])
    return np.asarray(sweep.scores)


def test_rescored_channels_carry_the_float32_scores_and_the_rest_shifted_int8_scores(bundle, monkeypatch):
    rescore = 5
    x = images(3, SIZE[0], seed=11)
    exact = fusioncam.Explainer(bundle, device="cpu")
    int8 = fusioncam.Explainer(bundle, device="cpu", precision="int8", int8_rescore=rescore)
    explanation, (args, kwargs, result) = _recorded_sweep(int8, x, monkeypatch)
    mins, maxs, float_z0 = np.asarray(args[3]), np.asarray(args[4]), np.asarray(args[6])
    int8_z0 = np.asarray(int8.predict(np.zeros((1, 3, *SIZE), np.float32)))[0][np.asarray(args[5])]
    float_scores = _sweep_scores(exact, args, kwargs, float_z0)
    int8_scores = _sweep_scores(int8, args, kwargs, int8_z0)  # the backend's default session: the INT8 graph
    assert np.abs(float_scores - int8_scores).max() > 1e-4  # the two scorers differ, so the check below can fail
    got = np.asarray(result.scores)
    active = maxs > mins
    rescored_any = False
    for n in range(len(x)):
        order = [c for c in np.argsort(-np.where(active[n], int8_scores[n], -np.inf), kind="stable") if active[n, c]]
        top, rest = order[:rescore], order[rescore:]
        np.testing.assert_allclose(got[n, top], float_scores[n, top], rtol=1e-6, atol=1e-6)
        offset = float(np.mean(float_scores[n, top] - int8_scores[n, top]))
        np.testing.assert_allclose(got[n, rest], int8_scores[n, rest] + offset, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got[n, ~active[n]], float_z0[n])  # constant channels: float32 z0
        assert int(result.forwards_run[n]) == int(active[n].sum()) + len(top)
        rescored_any |= len(top) > 0 and len(rest) > 0
    assert rescored_any
    reference = exact.explain(x, methods=("fusion",))
    # z0 and the probes are scored in float32: p(z0) is the float32 explainer's, bit for bit
    np.testing.assert_array_equal(explanation.facts["fusion"]["betas"]["b0"], reference.facts["fusion"]["betas"]["b0"])


def test_rescoring_every_channel_gives_the_float32_maps(bundle):
    x = images(2, SIZE[0], seed=12)
    exact = fusioncam.Explainer(bundle, device="cpu").explain(x, methods=("scorecam", "fusion"))
    everything = fusioncam.Explainer(bundle, device="cpu", precision="int8", int8_rescore=CHANNELS)
    got = everything.explain(x, methods=("scorecam", "fusion"))
    none = fusioncam.Explainer(bundle, device="cpu", precision="int8", int8_rescore=0).explain(x, methods=("scorecam",))
    assert np.abs(none.scorecam - exact.scorecam).max() > 1e-4  # all-INT8 sweep: not the float32 map
    np.testing.assert_allclose(got.scorecam, exact.scorecam, atol=1e-5)
    np.testing.assert_allclose(got.fusion, exact.fusion, atol=1e-5)


@pytest.mark.parametrize("value", [-1, 1.5, True, "8"])
def test_int8_rescore_must_be_a_count(bundle, value):
    with pytest.raises(InputError, match="int8_rescore must be a number of channels"):
        fusioncam.Explainer(bundle, device="cpu", precision="int8", int8_rescore=value)


def test_int8_rescore_needs_precision_int8(bundle):
    with pytest.raises(InputError, match="int8_rescore applies to precision='int8'"):
        fusioncam.Explainer(bundle, device="cpu", int8_rescore=8)


def test_the_cli_passes_int8_rescore(bundle, tmp_path, capsys):
    import cv2

    from fusioncam.cli.main import main

    rgb = (np.random.default_rng(13).random((SIZE[0], SIZE[1], 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "photo.png"), rgb[:, :, ::-1])
    outs = {}
    for label, extra in (("fp32", []), ("int8", ["--precision", "int8", "--int8-rescore", str(CHANNELS)]),
                         ("int8-0", ["--precision", "int8", "--int8-rescore", "0"])):
        outs[label] = tmp_path / label
        assert main(["explain", str(tmp_path / "photo.png"), "--model", str(bundle.path), "--out", str(outs[label]),
                     "--methods", "scorecam", "--device", "cpu", *extra]) == 0
    maps = {label: np.load(out / "photo_scorecam.npy") for label, out in outs.items()}
    np.testing.assert_allclose(maps["int8"], maps["fp32"], atol=1e-5)  # every channel rescored: the float32 map
    assert np.abs(maps["int8-0"] - maps["fp32"]).max() > 1e-4
    capsys.readouterr()
    assert main(["explain", str(tmp_path / "photo.png"), "--model", str(bundle.path), "--out", str(tmp_path / "x"),
                 "--device", "cpu", "--int8-rescore", "4"]) != 0
    assert "int8_rescore applies to precision='int8'" in capsys.readouterr().err


def test_warm_up_runs_both_scorers_at_the_full_batch(bundle):
    """warm_up() runs the INT8 scorer and the float32 scorer kept beside it (z0, the probes and the rescored channels
    run there) at the explainer's batch size, so neither pays ONNX Runtime's first-run set-up in an explanation."""

    class Counting:
        def __init__(self, session):
            self.session, self.batches = session, []

        def run(self, outputs, feed):
            self.batches.append(len(next(iter(feed.values()))))
            return self.session.run(outputs, feed)

    with fusioncam.Explainer(bundle, device="cpu", precision="int8", batch_size=8) as explainer:
        backend = explainer.backend
        int8, float32 = Counting(backend._scorer), Counting(backend._float32_scorer)
        backend._scorer, backend._float32_scorer = int8, float32
        explainer.warm_up()
    assert int8.batches == [8] and float32.batches == [8]
