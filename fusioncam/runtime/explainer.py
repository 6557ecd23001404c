"""`Explainer`: Fusion-CAM for a batch of images on ONNX Runtime, every heavy step on the chosen device."""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

from ..bundle import Bundle, load_bundle
from ..errors import InputError, NonFiniteError
from .betas import class_probabilities, normalized_pair
from .device_select import Device, select_device
from .explanation import Explanation
from .input_checks import check_images, resolve_targets
from .score_cam import map_probabilities, score_cam_sweep

log = logging.getLogger("fusioncam")

DEFAULT_BATCH = {"cpu": 16, "cuda": 256}
PRECISIONS = ("fp32", "tf32")


class Explainer:
    """Explains images with Fusion-CAM (and its Grad-CAM / Score-CAM parts) from a bundle."""

    def __init__(self, bundle: str | os.PathLike | Bundle, device: str = "auto", batch_size: int | None = None,
                 precision: str = "fp32", theta: float = 10.0, skip_constant_channels: bool = True) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        if precision not in PRECISIONS:
            raise InputError(f"precision '{precision}' is not available; choose one of {', '.join(PRECISIONS)}")
        if not 0.0 <= float(theta) <= 100.0:
            raise InputError(f"theta is a percentile and must be in [0, 100]; got {theta}")
        self.device: Device = select_device(device)
        batch_size = batch_size or DEFAULT_BATCH[self.device.kind]
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be a positive number of masked images per scorer run; got {batch_size}")
        self.batch_size = int(batch_size)
        self.theta = float(theta)
        self.skip_constant_channels = skip_constant_channels
        self.backend = self._make_backend(precision)
        manifest = self.bundle.manifest
        with self.backend.context():
            zeros = self.backend.asarray(np.zeros((1, 3, *manifest.input_size), dtype=np.float32))
            self._z0_logits = self.backend.score(zeros)[0].astype(self.backend.xp.float32)

    def _make_backend(self, precision: str):
        """The CPU or CUDA backend for the selected device."""
        if self.device.kind == "cpu":
            from .cpu_backend import CpuBackend

            return CpuBackend(self.bundle, self.batch_size)
        from .cuda_backend import CudaBackend

        return CudaBackend(self.bundle, self.batch_size, self.device.index, tf32=precision == "tf32")

    @property
    def class_names(self) -> list[str] | None:
        return self.bundle.manifest.class_names

    def explain(self, images, targets=None, names: Sequence[str] | None = None) -> Explanation:
        """Fusion-CAM of preprocessed images [N,3,H,W] (NumPy, or CuPy on the GPU path) for the given targets."""
        manifest = self.bundle.manifest
        images = check_images(images, manifest.input_size)
        n = int(images.shape[0])
        names = list(names) if names is not None else [f"image {i}" for i in range(n)]
        target_array = resolve_targets(targets, n, manifest.num_classes, self.class_names)
        backend = self.backend
        with backend.context():
            return self._explain_on_device(backend.asarray(images), backend.asarray(target_array), names)

    def _explain_on_device(self, images, targets, names: list[str]) -> Explanation:
        """The algorithm page, steps 0 to 3, batched over images."""
        backend, xp, kernels = self.backend, self.backend.xp, self.backend.kernels
        h, w = self.bundle.manifest.input_size
        n = int(images.shape[0])
        clock = backend.clock()

        clock.start("explain_pass")
        bad = kernels.nonfinite_rows(images)
        graph = backend.explain(images, targets)
        bad = bad | kernels.nonfinite_rows(graph["logits"], graph["activations"], graph["gradients"])
        clock.stop("explain_pass")
        self._raise_if_nonfinite(backend.to_host(bad), names)
        acts, grads, classes = graph["activations"], graph["gradients"], graph["target_used"]

        clock.start("fusion")
        gradcam = kernels.relu_upsample_normalize(kernels.weighted_channel_sum(acts, grads.mean(axis=(2, 3))), (h, w))
        denoised = kernels.percentile_denoise(gradcam, self.theta)
        mins, maxs = kernels.upsampled_min_max(acts, (h, w))
        clock.stop("fusion")

        sweep = score_cam_sweep(backend, images, acts, mins, maxs, classes, self._z0_logits, clock,
                                skip_constant=self.skip_constant_channels)

        clock.start("fusion")
        weights = kernels.softmax(sweep.scores).astype(xp.float32)
        scorecam = kernels.normalize(xp.maximum(kernels.upsample(kernels.weighted_channel_sum(acts, weights), (h, w)), 0))
        every = xp.arange(n, dtype=xp.int64)
        clock.stop("fusion")

        p_den_reg = map_probabilities(backend, images, xp.concatenate([denoised, scorecam]), xp.concatenate([every, every]),
                                      classes, clock, class_probabilities)
        b0 = backend.to_host(class_probabilities(xp, xp.broadcast_to(self._z0_logits, (n, self._z0_logits.shape[0])), classes))
        p_den_reg = backend.to_host(p_den_reg)
        b_den, b_reg, degenerate_1 = normalized_pair(p_den_reg[:n] - b0, p_den_reg[n:] - b0)

        clock.start("fusion")
        combined = kernels.weighted_pair(denoised, scorecam, backend.asarray(b_den.astype(np.float32)),
                                         backend.asarray(b_reg.astype(np.float32)))
        clock.stop("fusion")
        p_dr = backend.to_host(map_probabilities(backend, images, combined, every, classes, clock, class_probabilities))
        b_dr, b_reg2, degenerate_2 = normalized_pair(p_dr - b0, b_reg)

        clock.start("fusion")
        fusion = kernels.similarity_fusion(combined, scorecam, backend.asarray(b_dr.astype(np.float32)),
                                           backend.asarray(b_reg2.astype(np.float32)))
        probabilities = class_probabilities(xp, graph["logits"], classes)
        clock.stop("fusion")

        host = {name: backend.to_host(array) for name, array in {
            "fusion": fusion, "gradcam": gradcam, "denoised": denoised, "scorecam": scorecam, "combined": combined,
            "classes": classes, "probabilities": probabilities, "run": sweep.forwards_run, "skipped": sweep.forwards_skipped,
        }.items()}
        timings = clock.totals()
        timings["total"] = sum(timings.values())
        timings["scorer_forwards_run"] = int(host["run"].sum())
        timings["scorer_forwards_skipped"] = int(host["skipped"].sum())
        return Explanation(
            fusion=host["fusion"].astype(np.float32), gradcam=host["gradcam"].astype(np.float32),
            denoised=host["denoised"].astype(np.float32), scorecam=host["scorecam"].astype(np.float32),
            combined=host["combined"].astype(np.float32), classes=host["classes"].astype(np.int64),
            probabilities=host["probabilities"].astype(np.float64),
            betas={"b_den": b_den, "b_reg": b_reg, "b_dr": b_dr, "b_reg2": b_reg2, "b0": b0},
            degenerate=degenerate_1 | degenerate_2, timings=timings,
            forwards_run=host["run"].astype(np.int64), forwards_skipped=host["skipped"].astype(np.int64),
            device=str(self.device), class_names=self.class_names,
        )

    @staticmethod
    def _raise_if_nonfinite(bad: np.ndarray, names: list[str]) -> None:
        """A clear error naming every image whose input, logits, activations or gradients are not finite."""
        if bad.any():
            which = ", ".join(names[i] for i in np.flatnonzero(bad))
            raise NonFiniteError(
                f"non-finite values (NaN or infinity) in the input, logits, activations or gradients of: {which}. "
                f"Check the preprocessing of these images and the model's numerical stability."
            )

    def explain_files(self, paths: Sequence[str | os.PathLike], targets=None) -> Explanation:
        """Read, convert and preprocess image files with the bundle's size/mean/std, then explain them."""
        from ..images import load_batch

        manifest = self.bundle.manifest
        images, _ = load_batch(list(paths), manifest.input_size, manifest.mean, manifest.std)
        return self.explain(images, targets, names=[str(p) for p in paths])
