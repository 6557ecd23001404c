"""The Ray actor of a dataset run: one `Explainer` per worker; it decodes each block's bytes with fusioncam.images,
explains (and evaluates) the block's images together and writes or returns the block's rows."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..batch_retry import each_alone_on_failure
from ..errors import FusionCamError
from ..images import decode_model_input
from ..tasks.payloads import payloads_for
from ..runtime.cpu_backend import CPU_THREADS_ENV
from .bundle_shipping import local_bundle
from .output import write_part
from .regions import REGION_COLUMN
from .rows import BatchRows, RowLayout, SWEEP_METHODS, curve_column, metric_column


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs to build its Explainer and its rows (sent once, to each actor)."""

    bundle_path: str
    layout: RowLayout
    device: str = "cpu"
    scorer_batch: int | None = None
    threads: int | None = None  # ONNX Runtime intra-op threads on the CPU (cores / workers)
    step: int = 224
    out: str | None = None  # write each block's part file here and return only the light columns
    manifest_sha256: str = ""  # the bundle's identity, to find or check a shipped copy
    bundle_ref: object = None  # a Ray ObjectRef of bundle_files(), when workers may run on other machines
    instances: object = None  # detection: the InstanceSelection of every image (None: the task's default)


class ExplainWorker:
    """Ray Data callable class: pyarrow blocks of (source, bytes, error) -> blocks of output rows."""

    def __init__(self, settings: WorkerSettings) -> None:
        from ..runtime import Explainer

        if settings.threads:
            os.environ[CPU_THREADS_ENV] = str(settings.threads)
        self.settings = settings
        fetch = None
        if settings.bundle_ref is not None:
            import ray

            def fetch():
                return ray.get(settings.bundle_ref)
        bundle_path = local_bundle(settings.bundle_path, settings.manifest_sha256, fetch)
        self.explainer = Explainer(bundle_path, device=settings.device, batch_size=settings.scorer_batch)
        self.manifest = self.explainer.bundle.manifest
        self.payloads = payloads_for(self.manifest)  # the task's regions, row columns and metrics
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch):
        sources = batch.column("source").to_pylist()
        data = batch.column("bytes").to_pylist()
        errors = batch.column("error").to_pylist()
        given = batch.column(REGION_COLUMN).to_pylist() if REGION_COLUMN in batch.schema.names else [None] * len(sources)
        regions, region_errors = self.payloads.dataset_regions(given, tuple(self.manifest.input_size), sources)
        for i, message in region_errors.items():  # a row whose region cannot be read is an error row
            errors[i] = errors[i] or message
        images, decode_seconds = {}, {}
        for i, (source, raw, error) in enumerate(zip(sources, data, errors)):
            if error is not None:
                continue
            start = time.perf_counter()
            try:
                images[i] = self._model_input(raw, source)
            except FusionCamError as exc:
                errors[i] = str(exc)
            decode_seconds[i] = time.perf_counter() - start
        rows = self._explained_rows(sources, images, errors, regions, given)
        block = BatchRows(self.settings.layout)
        for i, source in enumerate(sources):
            base = {"source": source, "decode_seconds": decode_seconds.get(i), "worker": self.worker}
            if i in rows:  # one row per explained target (detection: per instance; none found: one row, no maps)
                for values, maps in rows[i] or [({}, None)]:
                    block.add({**base, **values}, maps)
            else:
                block.add({**base, "error": errors[i]})
        table = block.table()
        if self.settings.out is None:
            return table
        write_part(Path(self.settings.out), table)
        return table.drop_columns(self.settings.layout.heavy_columns())

    def _model_input(self, data: bytes, name: str) -> np.ndarray:
        """float32 [3, H, W] from a file's bytes, read as Explainer.explain_files and the CLI read files
        (images.decode_model_input)."""
        return decode_model_input(data, name, self.manifest.input_size, self.manifest.mean, self.manifest.std)

    def _explained_rows(self, sources: list[str], images: dict[int, np.ndarray], errors: list[str | None],
                        regions: list | None = None, given: list | None = None):
        """{index: [(row values, maps), ...]} of the decoded images, explained together; when the block fails as a whole
        (e.g. one image's logits are not finite), each image alone (batch_retry), so only the failing ones become
        error rows."""
        def explained(indices):
            found = self._explain(sources, {i: images[i] for i in indices}, regions, given)
            return [found[i] for i in indices]

        def failed(index: int, exc: Exception) -> None:
            errors[index] = str(exc)

        return {index: row for index, row in each_alone_on_failure(list(images), explained, failed) if row is not None}

    def _explain(self, sources: list[str], images: dict[int, np.ndarray], regions: list | None = None,
                 given: list | None = None):
        """Explain (and evaluate, as `fusioncam evaluate` does) these images: {index: [(row values, maps), ...]}
        (one entry per explained target: a detection bundle's instances, none where it finds no detection).
        `regions` (segmentation: one per row of the block, None for a classifier) and `given` (the rows' region
        text) are the block's."""
        layout = self.settings.layout
        indices = list(images)
        names = [sources[i] for i in indices]
        batch = np.stack([images[i] for i in indices])
        start = time.perf_counter()
        choose = getattr(self.payloads, "dataset_instances", None)  # detection: which instances each image gets
        explanation = self.explainer.explain(batch, methods=layout.methods, names=names,
                                             regions=None if regions is None else [regions[i] for i in indices],
                                             **({} if choose is None else
                                                {"instances": self.settings.instances or choose()}))
        explain_seconds = (time.perf_counter() - start) / len(indices)
        evaluation, evaluate_seconds = None, None
        if layout.evaluate:
            start = time.perf_counter()
            evaluation = self.payloads.evaluate_maps(self.explainer, batch, {m: explanation.maps[m] for m in
                                                     layout.methods}, explanation, self.settings.step, names,
                                                     road_percentiles=layout.road_percentiles)
            evaluate_seconds = (time.perf_counter() - start) / len(indices)
        rows: dict[int, list] = {index: [] for index in indices}
        row_image = getattr(explanation, "image_index", None)  # detection: the image of each instance row
        for j in range(len(explanation.classes)):
            index = indices[j if row_image is None else int(row_image[j])]
            row = {"class_index": int(explanation.classes[j]), "class_name": explanation.class_name(j),
                   "probability": float(explanation.probabilities[j]), "explain_seconds": explain_seconds,
                   "evaluate_seconds": evaluate_seconds, "batch_images": len(indices),
                   **self.payloads.dataset_row(explanation, j, None if given is None else given[index])}
            if "fusion" in layout.methods:
                row.update(explanation.beta_row(j), degenerate=bool(explanation.degenerate[j]))
            if "unioncam" in layout.methods:
                row.update({f"union_{k}": v for k, v in explanation.union_beta_row(j).items()},
                           union_kept_combined=bool(explanation.union_kept_combined[j]))
            if any(m in SWEEP_METHODS for m in layout.methods):
                row.update(forwards_run=int(explanation.forwards_run[j]),
                           forwards_skipped=int(explanation.forwards_skipped[j]))
            if evaluation is not None:
                for method, scores in evaluation.scores.items():
                    row.update({metric_column(method, m): float(scores.per_image[m][j]) for m in layout.metrics()})
                    row[curve_column(method, "deletion")] = scores.deletion[1][j].tolist()
                    row[curve_column(method, "insertion")] = scores.insertion[1][j].tolist()
            rows[index].append((row, {m: explanation.maps[m][j] for m in layout.methods}))
        return rows
