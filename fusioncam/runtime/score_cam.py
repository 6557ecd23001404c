"""The Score-CAM sweep: one masked forward per (image, non-constant channel), in shared scorer batches."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ScoreSweep:
    """Raw target logits per channel (-inf for channels fast mode left out) and how many forwards each image needed."""

    scores: object  # [N, K] float32, device array
    forwards_run: object  # [N] int64, device array
    forwards_skipped: object  # [N] int64, device array


def score_cam_sweep(backend, images, acts, mins, maxs, classes, z0_logits, clock, skip_constant: bool = True,
                    on_batch=None, selected=None) -> ScoreSweep:
    """s_k = y_c(x * norm(up(A_k))) for every channel; a constant channel's mask is all zeros, so its score
    is exactly the cached all-zeros logit and (with `skip_constant`) no forward runs for it.
    `on_batch(done, total)`, if given, is called after each scorer batch (for progress bars).
    `selected` [N, K] bool (fast mode): only those channels are scored; the others get score -inf, which is
    weight 0 in Score-CAM's softmax."""
    xp = backend.xp
    kernels = backend.kernels
    n, k = mins.shape
    scores = xp.repeat(z0_logits[classes][:, None], k, axis=1).astype(xp.float32)
    active = (maxs > mins) if skip_constant else xp.ones((n, k), dtype=bool)
    if selected is not None:
        active = active & selected
    image_index, channel_index = xp.nonzero(active)
    image_index = image_index.astype(xp.int64)
    channel_index = channel_index.astype(xp.int64)
    target_of_row = classes[image_index]
    buffer = backend.input_buffer()
    total = int(image_index.shape[0])
    ranges = backend.batch_ranges(total)
    for done, (start, stop) in enumerate(ranges, 1):
        rows = slice(start, stop)
        clock.start("mask_generation")
        kernels.write_channel_masked_inputs(images, acts, mins, maxs, image_index[rows], channel_index[rows], buffer, 0)
        clock.stop("mask_generation")
        clock.start("scorer_forwards")
        logits = backend.score_rows(stop - start)
        scores[image_index[rows], channel_index[rows]] = logits[xp.arange(stop - start), target_of_row[rows]]
        clock.stop("scorer_forwards")
        if on_batch is not None:
            on_batch(done, len(ranges))
    if selected is not None:
        scores[~selected] = -xp.inf
    run = active.sum(axis=1).astype(xp.int64)
    return ScoreSweep(scores=scores, forwards_run=run, forwards_skipped=k - run)

