"""The CPU backend of a segmentation bundle: its explain graph also takes a region, its scorer a class and region
weights per row and returns the region probability P (export/segmentation_graph.py, docs/segmentation.md)."""

from __future__ import annotations

import numpy as np

from ..bundle import Bundle
from ..errors import DeviceError, InputError
from ..export.segmentation_graph import PREDICTED_REGION
from ..graph_names import INPUT, REGION, REGION_WEIGHTS, SCORE, SEGMENTATION_EXPLAIN_OUTPUTS, TARGET
from .cpu_backend import CpuBackend
from .device_select import Device



class SegmentationCpuBackend(CpuBackend):
    """CpuBackend whose explain pass takes regions and whose scorer runs return P for each row's class and region.

    `score_rows` returns P [count] for the rows' classes and region weights given to `set_row_targets` just before
    (runtime/segmentation.py's scorer service does both); `score` (a classifier's logits) does not exist here."""

    def __init__(self, bundle: Bundle, batch_size: int, fp16: bool = False) -> None:
        super().__init__(bundle, batch_size, fp16)
        self.output_size = tuple(bundle.manifest.output_size)
        self._row_classes = self._row_weights = None

    def explain(self, images: np.ndarray, targets: np.ndarray, region: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """One pass: class scores, A, dS/dA, the classes and region weights used; `region` [N, H, W] (None: the
        predicted region of each image's class)."""
        if region is None:
            region = np.full((images.shape[0], *images.shape[2:]), PREDICTED_REGION, dtype=np.float32)
        outputs = self._explain.run(list(SEGMENTATION_EXPLAIN_OUTPUTS),
                                    {INPUT: images, TARGET: targets, REGION: np.ascontiguousarray(region, np.float32)})
        return dict(zip(SEGMENTATION_EXPLAIN_OUTPUTS, outputs))

    def set_row_targets(self, classes: np.ndarray, weights: np.ndarray) -> None:
        """The classes [count] and region weights [count, H', W'] of the rows the next score_rows call scores."""
        self._row_classes = np.ascontiguousarray(classes, np.int64)
        self._row_weights = np.ascontiguousarray(weights, self._input_dtype)

    def score_rows(self, count: int) -> np.ndarray:
        """float32 [count]: P of the input buffer's first `count` rows for the classes and region weights given to
        set_row_targets (a segmentation scorer returns one region probability per row, not class logits)."""
        if self._row_classes is None or len(self._row_classes) != count:
            raise InputError("a segmentation bundle's scorer scores each row for an image's class and region: explain "
                             "with Explainer.explain(targets=..., regions=...) and score maps with fusioncam.runtime."
                             "segmentation_metrics.evaluate_segmentation_maps (the classifier metrics do not apply)")
        feed = {INPUT: self._buffer[:count], TARGET: self._row_classes, REGION_WEIGHTS: self._row_weights}
        self._row_classes = self._row_weights = None
        return self._scorer.run([SCORE], feed)[0].astype(np.float32, copy=False)

    def score(self, images: np.ndarray) -> np.ndarray:
        """Class logits of a classifier scorer: a segmentation scorer has none (see score_rows)."""
        raise InputError("a segmentation bundle's scorer returns region probabilities, not class logits: use "
                         "Explainer.explain(targets=..., regions=...) (runtime/segmentation.py)")

    def warm_up(self) -> None:
        """One full scorer batch of zeros for class 0 over the whole output."""
        self._buffer[:] = 0
        self.set_row_targets(np.zeros(self.batch_size, np.int64),
                             np.ones((self.batch_size, *self.output_size), dtype=np.float32))
        self.score_rows(self.batch_size)


def make_segmentation_backend(bundle: Bundle, device: Device, batch_size: int, precision: str) -> SegmentationCpuBackend:
    """The backend of a segmentation bundle; segmentation runs on the CPU provider in this version."""
    if device.kind != "cpu":
        raise DeviceError(f"segmentation bundles ({bundle.path}) run on the CPU in this version of fusioncam; "
                          f"create the Explainer with device='cpu'")
    return SegmentationCpuBackend(bundle, batch_size, fp16=precision == "fp16")
