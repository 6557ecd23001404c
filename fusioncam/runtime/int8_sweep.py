"""The Score-CAM sweep with the INT8 scorer (`Explainer(precision="int8")`, beyond the paper): every channel's masked
forward runs in INT8, then the `rescore` channels with the highest INT8 scores per image run again in float32.

Why: Score-CAM weighs channels by a softmax over raw logits, so INT8 logit errors of a few percent change the
leading channels' weights by tens of percent. Rescoring the top channels in float32 makes the weights of the
channels the softmax favours exact (their scores are the float32 scorer's, bit for bit); the INT8 scores of the
other channels are moved by the mean float32 - INT8 difference of the rescored ones, so that the two groups sit on
one scale (INT8 scores run a few tenths of a logit low on EfficientNet-Lite0's masked photos, which would otherwise
raise every rescored channel's weight against the rest). Cost: `rescore` float32 forwards per image.

Everything else the methods score (the all-zeros image z0, every method's probes: a few forwards per image) runs in
float32 under `float32_scoring`, so p(z0) and Fusion-CAM's betas are exact; only the sweep, the hundreds of forwards,
is INT8.
"""

from __future__ import annotations

import contextlib
from numbers import Integral
from typing import Iterator

from .score_sweep import ScoreSweep, score_cam_sweep
from .scorer import ProgressCallback, Scorer
from .stage_clock import StageClock

# Channels per image rescored in float32 by default: none. Measured by benchmarks/int8_scorer.py --rescore 0,32
# (2-core AMD EPYC, 2026-12-07): 32 rescored channels moved EfficientNet-Lite0 `_blocks.15`'s mean map r from 0.978 to
# 0.980 while its speed-up fell from 1.94x to 1.51x, and ResNet-50 `layer4`'s from 0.9995 to 1.0000 (3.52x to 2.92x).
DEFAULT_INT8_RESCORE = 0


@contextlib.contextmanager
def float32_scoring(scorer: Scorer) -> Iterator[None]:
    """Within the block the scorer's runs use the bundle's float32 scorer where the backend runs the INT8 one
    (CpuBackend(int8=True)); with any other backend nothing changes."""
    switch = getattr(scorer.backend, "float32_scoring", None)
    with switch() if switch is not None else contextlib.nullcontext():
        yield


def int8_score_sweep(scorer: Scorer, images, acts, mins, maxs, targets, float_baseline_scores, clock: StageClock,
                     rescore: int, skip_constant: bool = True, on_batch: ProgressCallback | None = None,
                     selected=None, masked_inputs=None) -> ScoreSweep:
    """score_cam_sweep's scores with the INT8 scorer, then each image's `rescore` highest-scoring scored channels
    (fewer where fewer were scored) rescored in float32 and the other INT8 scores shifted by the image's mean float32
    - INT8 difference over them; constant channels then get the float32 z0 score, `float_baseline_scores` [N].
    With rescore 0 every score is INT8's, constant channels the INT8 scorer's z0 (one INT8 forward per call).
    forwards_run counts the float32 rescoring forwards too."""
    xp, task = scorer.xp, scorer.task
    if rescore > 0:  # constant channels end with the float32 z0 score below; no INT8 z0 forward is needed
        baseline = float_baseline_scores
    else:
        baseline = task.baseline(scorer, targets, task.constant_baseline(scorer), clock).scores
    sweep = score_cam_sweep(scorer, images, acts, mins, maxs, targets, baseline, clock,
                            skip_constant=skip_constant, on_batch=on_batch, selected=selected,
                            masked_inputs=masked_inputs)
    if rescore <= 0:
        return sweep
    masked_inputs = masked_inputs or scorer.kernels.write_channel_masked_inputs
    n, k = mins.shape
    active = (maxs > mins) if skip_constant else xp.ones((n, k), dtype=bool)
    if selected is not None:
        active = active & selected
    scores = sweep.scores
    ranking = xp.where(active, scores, -xp.inf)
    top = xp.argsort(-ranking, axis=1, kind="stable")[:, : min(int(rescore), k)]
    chosen = xp.zeros((n, k), dtype=bool)
    xp.put_along_axis(chosen, top, True, axis=1)
    chosen &= active
    image_index, channel_index = xp.nonzero(chosen)
    image_index = image_index.astype(xp.int64)
    channel_index = channel_index.astype(xp.int64)

    def write(start: int, stop: int, buffer) -> None:
        masked_inputs(images, acts, mins, maxs, image_index[start:stop], channel_index[start:stop], buffer, 0)

    with float32_scoring(scorer):
        exact = scorer.target_logits(int(image_index.shape[0]), targets[image_index], write, clock)
    counts = chosen.sum(axis=1)
    offsets = xp.zeros((n,), dtype=xp.float64)
    xp.add.at(offsets, image_index, (exact - scores[image_index, channel_index]).astype(xp.float64))
    offsets = (offsets / xp.maximum(counts, 1)).astype(xp.float32)
    shifted = scores + offsets[:, None]  # -inf (channels fast mode left out) stays -inf
    shifted[image_index, channel_index] = exact
    constant = ~(maxs > mins) if skip_constant else xp.zeros((n, k), dtype=bool)
    if selected is not None:
        constant = constant & selected
    shifted = xp.where(constant, float_baseline_scores[:, None].astype(xp.float32), shifted)
    return ScoreSweep(scores=shifted.astype(xp.float32), forwards_run=sweep.forwards_run + counts.astype(xp.int64),
                      forwards_skipped=sweep.forwards_skipped)


def int8_rescore_of(precision: str, int8_rescore) -> int | None:
    """Explainer's int8_rescore checked: None for a precision other than int8 (where a number is refused), else a
    count of channels >= 0 (None: DEFAULT_INT8_RESCORE)."""
    from ..errors import InputError

    if int8_rescore is not None and (isinstance(int8_rescore, bool) or not isinstance(int8_rescore, Integral)
                                     or int8_rescore < 0):
        raise InputError(f"int8_rescore must be a number of channels per image (an integer >= 0) or None for the "
                         f"default {DEFAULT_INT8_RESCORE}; got {int8_rescore!r}")
    if precision != "int8":
        if int8_rescore is not None:
            raise InputError(f"int8_rescore applies to precision='int8' (the INT8 scorer's sweep); this Explainer's "
                             f"precision is {precision!r}: leave int8_rescore None")
        return None
    return DEFAULT_INT8_RESCORE if int8_rescore is None else int(int8_rescore)
