"""The shared engine every method reads: the explain pass's outputs, plus Grad-CAM, the Score-CAM sweep and p(z0) once."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

from ...graph_names import ACTIVATIONS, GRADIENTS, LOGITS, REGION_WEIGHTS, TARGET_USED
from ..channel_selection import gradcam_contributions, top_channels
from ..int8_sweep import int8_score_sweep
from ..score_sweep import ScoreSweep, score_cam_sweep
from ..scorer import ProgressCallback, Scorer
from ..stage_clock import StageClock
from .compat import arithmetic


@dataclass
class MethodOutput:
    """One method's result: its map [N,H,W], intermediate maps and per-image facts (arrays or dicts of arrays), all on
    the device; the Explainer copies them to the host once, at the end."""

    map: object
    maps: dict[str, object] = field(default_factory=dict)
    facts: dict[str, object] = field(default_factory=dict)


class Engine:
    """The quantities of one explain call for N images; each shared one is computed on first use, then cached.

    Task-agnostic: `targets` are the task's per-image targets (Task.image_targets: classes, or class + region),
    indexed by image to give scorer rows their targets; `baseline` is the task's Baseline of the all-zeros image."""

    SHARED_MAPS = ("gradcam", "scorecam")  # shared maps an Explanation reports when some method computed them

    def __init__(self, scorer: Scorer, images, graph: dict, targets, baseline, theta: float, skip_constant: bool,
                 clock: StageClock, on_batch: ProgressCallback | None = None, max_channels: int | None = None,
                 compat: str | None = None, explain_classes: Callable | None = None, head=None,
                 derived=None) -> None:
        self.scorer = scorer  # the masked forwards of the sweep and the probes, and host/device copies
        self.xp = scorer.xp
        self.kernels = scorer.kernels
        self.images = images
        self.acts = graph[ACTIVATIONS]
        self.grads = graph[GRADIENTS]
        self.logits = graph.get(LOGITS)  # class scores: [N, classes], or a segmentation's [N, classes, H', W']
        self.explained_classes = graph.get(TARGET_USED)  # int64 [N]: each image's explained class
        self.region_weights = graph.get(REGION_WEIGHTS)  # a segmentation's explained region w [N, H', W'], else None
        # (images [N, 3, H, W], classes int64 [N]) -> another explain pass's outputs for those classes, a segmentation's
        # regions kept (comparison_passes.py); FinerCAM's comparison gradients. None: no such pass for this task
        self.explain_classes = explain_classes
        self.head = head  # the bundle's head graph (runtime/head_session.HeadSession): AblationCAM's, ReciproCAM's rows
        self.derived = derived  # FullGrad's and ShapleyCAM's graphs (runtime/derived_graphs.DerivedGraphs), or None
        self.targets = targets  # per image; targets[image_index] are the rows' targets for the scorer
        self.baseline = baseline  # the all-zeros image's scores (float32 [N]) and probabilities (float64 [N])
        self.theta = float(theta)
        self.skip_constant = skip_constant
        self.clock = clock
        self.on_batch = on_batch  # progress callback (done, total) over the Score-CAM sweep's scorer batches
        self.max_channels = max_channels  # fast mode: score only this many channels per image (None: all, exact)
        self.out_hw = (int(images.shape[2]), int(images.shape[3]))
        self.every_image = self.xp.arange(int(images.shape[0]), dtype=self.xp.int64)
        self.probe_rows = 0  # masked forwards run for the methods' probes (the Score-CAM sweep not counted)
        # Grad-CAM++'s and Score-CAM's: the authors' (compat=None) or pytorch-grad-cam's (runtime/methods/compat.py)
        self.arithmetic = arithmetic(self.kernels, compat)
        self.compat = compat  # as given: methods whose variants differ beyond Arithmetic read it (AblationCAM)

    def computed(self, name: str):
        """A shared quantity if some method needed it (else None): gradcam, scorecam, sweep, ..."""
        return vars(self).get(name)

    def as_weights(self, values):
        """Per-image values (a device array, e.g. betas) as the float32 weights the map kernels take."""
        return self.scorer.asarray(values).astype(self.xp.float32)

    @cached_property
    def b0(self):
        """p(z0) per image, float64 [N] on the device: the all-zeros input's explained probability."""
        return self.baseline.probabilities

    @cached_property
    def gradcam_weights(self):
        """Grad-CAM's channel weights [N, K] float64 (device)."""
        return self.kernels.gradcam_weights(self.grads)

    @cached_property
    def gradcam_plus_plus_weights(self):
        """Grad-CAM++'s channel weights [N, K] float64 (device), by the compat option's arithmetic."""
        return self.arithmetic.plus_plus_weights(self.acts, self.grads)

    @cached_property
    def gradcam(self):
        """L_grad = norm(up(relu(sum_k w_k A_k))), [N, H, W] (device)."""
        weights = self.gradcam_weights
        self.clock.start("shared_maps")
        result = self.channel_weighted_map(weights)
        self.clock.stop("shared_maps")
        return result

    def channel_weighted_map(self, weights):
        """norm(up(relu(sum_k weights_k A_k))): the map of every gradient-weight method, [N, H, W] (device)."""
        return self.low_resolution_map(self.kernels.weighted_channel_sum(self.acts, weights))

    def low_resolution_map(self, low):
        """norm(up(relu(low))) of feature-map-sized maps [N, h, w]: the map every gradient method ends with."""
        return self.kernels.relu_upsample_normalize(low, self.out_hw)

    @cached_property
    def sweep(self) -> ScoreSweep:
        """The Score-CAM sweep, run once for every method that needs it (constant channels skipped exactly)."""
        self.clock.start("shared_maps")
        mins, maxs = self.arithmetic.mask_min_max(self.acts, self.out_hw)
        selected = self.selected_channels
        self.clock.stop("shared_maps")
        rescore = getattr(self.scorer.backend, "int8_rescore", None)  # an int with precision="int8", else None
        if rescore is not None:  # the INT8 sweep, its top channels rescored in float32 (runtime/int8_sweep.py)
            return int8_score_sweep(self.scorer, self.images, self.acts, mins, maxs, self.targets,
                                    self.baseline.scores, self.clock, rescore, skip_constant=self.skip_constant,
                                    on_batch=self.on_batch, selected=selected,
                                    masked_inputs=self.arithmetic.write_masked_inputs)
        return score_cam_sweep(self.scorer, self.images, self.acts, mins, maxs, self.targets, self.baseline.scores,
                               self.clock, skip_constant=self.skip_constant, on_batch=self.on_batch,
                               selected=selected, masked_inputs=self.arithmetic.write_masked_inputs)

    @property
    def selected_channels(self):
        """Fast mode's [N, K] bool: the max_channels largest Grad-CAM contributions per image; None in exact mode."""
        channels = int(self.acts.shape[1])
        if self.max_channels is None or self.max_channels >= channels:
            return None
        return top_channels(gradcam_contributions(self.acts, self.gradcam_weights), self.max_channels)

    @cached_property
    def scorecam(self):
        """L_reg = norm(relu(sum_k a_k up(A_k))), a = softmax of the sweep's scores, [N, H, W] (device); with
        compat="pytorch-grad-cam", norm(up(relu(sum_k a_k A_k))) over its corner-aligned masks' scores."""
        sweep = self.sweep
        kernels, xp = self.kernels, self.xp
        self.clock.start("shared_maps")
        weights = kernels.softmax(sweep.scores).astype(xp.float32)
        low = kernels.weighted_channel_sum(self.acts, weights)
        result = self.arithmetic.score_map(low, self.out_hw)
        self.clock.stop("shared_maps")
        return result
