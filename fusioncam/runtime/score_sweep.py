"""The Score-CAM sweep: one masked forward per (image, non-constant channel), in shared scorer batches."""

from __future__ import annotations

from dataclasses import dataclass

from .scorer import ProgressCallback, Scorer
from .stage_clock import StageClock


@dataclass
class ScoreSweep:
    """Raw target logits per channel (-inf for channels fast mode left out) and how many forwards each image needed."""

    scores: object  # [N, K] float32, device array
    forwards_run: object  # [N] int64, device array
    forwards_skipped: object  # [N] int64, device array


def score_cam_sweep(scorer: Scorer, images, acts, mins, maxs, targets, baseline_scores, clock: StageClock,
                    skip_constant: bool = True, on_batch: ProgressCallback | None = None, selected=None,
                    masked_inputs=None) -> ScoreSweep:
    """s_k = y_c(x * norm(up(A_k))) for every channel (y_c: the task's raw explained score of each image's target,
    `targets` indexed by image); a constant channel's mask is all zeros, so its score is exactly the all-zeros
    image's, `baseline_scores` [N] (Baseline.scores), and (with `skip_constant`) no forward runs for it.
    `on_batch(done, total)`, if given, is called after each scorer batch (for progress bars).
    `selected` [N, K] bool (fast mode): only those channels are scored; the others get score -inf, which is
    weight 0 in Score-CAM's softmax. `masked_inputs` writes the rows (the arguments of the kernels'
    write_channel_masked_inputs, the default; compat="pytorch-grad-cam" gives its corner-aligned masks)."""
    xp, kernels = scorer.xp, scorer.kernels
    masked_inputs = masked_inputs or kernels.write_channel_masked_inputs
    n, k = mins.shape
    scores = xp.repeat(baseline_scores[:, None], k, axis=1).astype(xp.float32)
    active = (maxs > mins) if skip_constant else xp.ones((n, k), dtype=bool)
    if selected is not None:
        active = active & selected
    image_index, channel_index = xp.nonzero(active)
    image_index = image_index.astype(xp.int64)
    channel_index = channel_index.astype(xp.int64)

    def write(start: int, stop: int, buffer) -> None:
        masked_inputs(images, acts, mins, maxs, image_index[start:stop], channel_index[start:stop], buffer, 0)

    total = int(image_index.shape[0])
    scores[image_index, channel_index] = scorer.target_logits(total, targets[image_index], write, clock, on_batch)
    if selected is not None:
        scores[~selected] = -xp.inf
    run = active.sum(axis=1).astype(xp.int64)
    return ScoreSweep(scores=scores, forwards_run=run, forwards_skipped=k - run)

