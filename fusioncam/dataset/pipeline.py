"""`explain_dataset`: the model exported once in the driver, Ray tasks reading the images' bytes, a fixed pool of Ray
actors (one Explainer each) explaining blocks of images, every block written as its own Parquet part file."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..metrics.evaluation import checked_methods
from ..metrics.inputs import checked_step
from ..metrics.perturbation_curves import DEFAULT_STEP
from ..metrics.road import checked_percentiles, refuse_road
from ..tasks.payloads import payloads_for
from .bundle_shipping import bundle_files
from .crashes import CRASH_RETRIES, crashed_blocks_set_aside, write_crash_rows
from .output import done_sources, prepare_output
from .ray_support import cluster_cpus, connect
from .run_progress import counted_rows
from .rows import MAP_DTYPES, RowLayout
from .sources import InputPlan, plan_inputs, source_dataset, table_rows
from .summary import write_summary
from .worker import ExplainWorker, WorkerSettings

DEFAULT_BATCH_IMAGES = 8


@dataclass
class DatasetRun:
    """A finished run that wrote OUT: where it is, its summary (summary.json's content) and summary.md's text as
    this run wrote it."""

    out: Path
    summary: dict[str, object]
    markdown: str = ""

    def table(self, columns: Sequence[str] | None = None):
        """The result table (pyarrow), one row per image sorted by source; `columns` to read only some."""
        from .output import read_results

        return read_results(self.out, columns)


def explain_dataset(source: str | os.PathLike | Sequence[str | os.PathLike], model: str | os.PathLike,
                    out: str | os.PathLike | None = None, methods: str | Sequence[str] = ("fusion",),
                    evaluate: bool = False, workers: int = 1, gpus_per_worker: float = 0,
                    batch_images: int = DEFAULT_BATCH_IMAGES, address: str | None = None, *,
                    layer: str | None = None, scorer_batch: int | None = None, threads_per_worker: int | None = None,
                    step: int = DEFAULT_STEP, map_dtype: str = "float16", image_column: str | None = None,
                    id_column: str | None = None, crash_retries: int = CRASH_RETRIES,
                    notify: Callable[[str], None] | None = None, instances=None,
                    road_percentiles: Sequence[int] | None = None):
    """Explain every image of `source` with `model` on Ray Data.

    source: a folder (searched recursively), a glob, a .txt/.csv list of paths, a Parquet table with an image column
    (bytes or paths; for a segmentation bundle, an optional `region` column: dataset/regions.py), one image, or a
    list of these; local paths or URIs pyarrow can open. model: a bundle
    directory, an .onnx file or 'efficientnet_lite0' (exported once, here, into the cache); a bundle with several
    target layers gives each row the maps Explainer.explain aggregates over them (summary.json's run names every
    layer in target_layers), and refuses FullGrad and ShapleyCAM before Ray starts. workers: Ray actors, each
    with one Explainer (on `gpus_per_worker` GPUs, or on cores / workers CPU threads); batch_images: images per
    block (explained together, one part file each). address: a Ray cluster ('auto', 'ray://head:10001'); default:
    the running Ray, else a local one. evaluate: also each method's faithfulness metrics, as `fusioncam evaluate`.
    crash_retries: how often a block whose worker process died is retried (fusioncam.dataset.crashes); with `out`,
    images that still kill their worker when explained alone become error rows, and the run goes on.
    instances (detection bundles): an InstanceSelection (min_score, max_instances) for every image; default
    InstanceSelection(). road_percentiles (classification bundles, with evaluate): also ROAD's MoRF, LeRF and
    combined at these percentiles (metrics/road.py; e.g. ROAD_PERCENTILES, 10 to 90); None: no ROAD.

    With `out`: writes OUT/parts/*.parquet (one row per image, see fusioncam.dataset.rows), skipping the images an
    earlier run with the same settings already wrote there, then summary.json / summary.md (metrics.csv,
    curves.png); returns a DatasetRun. Without `out`: returns the lazy Ray Dataset of the rows (Ray stays up).
    """
    methods = checked_methods((methods,) if isinstance(methods, str) else tuple(methods))
    _check_counts(workers, gpus_per_worker, batch_images, threads_per_worker, map_dtype)
    if isinstance(crash_retries, bool) or not isinstance(crash_retries, int) or crash_retries < 0:
        raise InputError(f"crash_retries must be 0 or a positive integer; got {crash_retries!r}")
    sources = [os.fspath(s) for s in ([source] if isinstance(source, (str, os.PathLike)) else source)]
    plan = plan_inputs(sources, output=out)
    from ..bundle_cache import bundle_for
    from ..runtime.several_layers import check_several_layer_methods

    bundle = bundle_for(model, layer, notify=notify)
    check_several_layer_methods(bundle, methods)  # before Ray starts: what a several-layer bundle cannot run
    manifest = bundle.manifest
    if evaluate:
        checked_step(step, manifest.input_size[0] * manifest.input_size[1])
    road_percentiles = _checked_road(road_percentiles, evaluate, getattr(manifest, "task", None) or "classification")
    if instances is not None and getattr(manifest, "task", None) != "detection":
        raise InputError(f"--min-score and --max-instances (instances=) apply to detection bundles only; this model "
                         f"explains a {getattr(manifest, 'task', None) or 'classification'} task")
    chosen = {} if instances is None else {"instances": [float(instances.min_score), int(instances.max_instances)]}
    layout = RowLayout(methods, bool(evaluate), tuple(manifest.input_size), map_dtype,
                       tuple(payloads_for(manifest).dataset_fields()), road_percentiles)
    out_dir, done = None, frozenset()
    if out is not None:
        out_dir = prepare_output(out, {"model": str(bundle.path), "model_sha256": manifest.manifest_sha256,
                                       "methods": list(methods), "evaluate": bool(evaluate),
                                       "step": int(step) if evaluate else None, "map_dtype": map_dtype, **chosen,
                                       **({} if road_percentiles is None else
                                          {"road_percentiles": list(road_percentiles)})})
        done = done_sources(out_dir)
    ray, started = connect(address)
    try:
        device = "cuda" if gpus_per_worker else "cpu"
        threads = None if gpus_per_worker else (threads_per_worker or max(1, cluster_cpus(ray) // workers))
        if not gpus_per_worker and workers > cluster_cpus(ray):
            raise InputError(f"--workers {workers} is more than the {cluster_cpus(ray)} CPUs Ray has; each CPU "
                             f"worker holds one")
        shipped = ray.put(bundle_files(bundle.path)) if address else None  # workers may be on other machines
        settings = WorkerSettings(str(bundle.path), layout, device, scorer_batch, threads, int(step),
                                  str(out_dir) if out_dir is not None else None, manifest.manifest_sha256, shipped,
                                  instances)

        def explained_rows(todo: InputPlan, skip: frozenset[str], images_per_block: int, isolated: bool = False):
            """The lazy explaining dataset; `isolated`: one task at a time per actor, so that a worker that dies
            takes only its own image's task with it (else the tasks queued on it fail too)."""
            rows = source_dataset(ray, todo, skip, images_per_block, image_column, id_column)
            pool = ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1 if isolated else None)
            if rows is None:
                return None
            with warnings.catch_warnings():  # Ray 2.60 has no named parameter for max_task_retries yet (ray < 2.64)
                warnings.simplefilter("ignore", DeprecationWarning)
                return rows.map_batches(
                    ExplainWorker, fn_constructor_args=(settings,), batch_size=images_per_block, batch_format="pyarrow",
                    compute=pool, num_cpus=1, num_gpus=gpus_per_worker or None, max_task_retries=crash_retries)

        if out_dir is None:
            explained = explained_rows(plan, done, batch_images)
            if explained is None:
                raise InputError("every input image is already explained; nothing to do")
            return explained
        start = time.perf_counter()
        with crashed_blocks_set_aside(ray):
            planned, in_tables = set(plan.paths), table_rows(ray, plan)
            # the images left, for the progress lines (a detection run writes a row per instance: no total there)
            per_instance = getattr(manifest, "task", None) == "detection"
            total = None if per_instance else len(planned - done) + max(in_tables - len(done - planned), 0)
            count = _drain(explained_rows(plan, done, batch_images), notify, total)
            # The blocks set aside (a crash, or queued on a worker that crashed) again, one image per block and one
            # task per worker at a time: only the images that crash on their own stay unexplained.
            written = done_sources(out_dir)
            unreached = [p for p in plan.paths if p not in written]
            missing_rows = in_tables - len(written - planned)
            if unreached or missing_rows > 0:
                todo = InputPlan(paths=unreached, tables=plan.tables if missing_rows > 0 else [])
                count += _drain(explained_rows(todo, written, 1, isolated=True), notify,
                                None if per_instance else len(unreached) + max(missing_rows, 0))
                written = done_sources(out_dir)
                unreached = [p for p in unreached if p not in written]
                missing_rows = in_tables - len(written - planned)
        if unreached:
            write_crash_rows(out_dir, layout, unreached, crash_retries + 1)
            _say(notify, f"{len(unreached)} image(s) crashed the worker process {crash_retries + 1} times each and "
                         f"are error rows: {', '.join(unreached[:5])}{' ...' if len(unreached) > 5 else ''}")
        if missing_rows > 0:
            _say(notify, f"{missing_rows} input table row(s) have no result row: rows with the same identity share one "
                         f"(duplicates), and rows whose worker process died on every attempt are left out; run the "
                         f"same command again to retry those")
        seconds = time.perf_counter() - start
        # target_layer: the first (as before); target_layers: every one, whose maps the rows' maps aggregate
        run = {"model": manifest.source, "bundle": str(bundle.path), "target_layer": manifest.target_layer,
               "target_layers": list(bundle.layer_names),
               "device": device, "workers": workers, "gpus_per_worker": gpus_per_worker,
               "threads_per_worker": threads, "batch_images": batch_images, "images_this_run": count,
               "skipped_as_done": len(done), "crashed_workers": unreached,
               "table_rows_without_result": max(missing_rows, 0), "seconds": seconds,
               "images_per_second": count / seconds if seconds > 0 and count else 0.0}
        return DatasetRun(out_dir, *write_summary(out_dir, layout, int(step), run, payloads_for(manifest).score_name))
    finally:
        if started and out is not None:
            ray.shutdown()


def _checked_road(road_percentiles, evaluate: bool, task: str) -> tuple[int, ...] | None:
    """ROAD's percentiles, checked (None: off); refused without evaluate and for bundles of other tasks."""
    if road_percentiles is None:
        return None
    if not evaluate:
        raise InputError("ROAD (road_percentiles=, --road) is a faithfulness metric measured with evaluate=True "
                         "(--evaluate); add it, or leave ROAD off")
    refuse_road(task, None if task == "classification" else road_percentiles)
    return checked_percentiles(road_percentiles)


def _drain(explained, notify: Callable[[str], None] | None = None, total: int | None = None) -> int:
    """Run the lazy dataset to its end (each block writes its own part file); the number of rows it gave. With
    `notify`, progress lines as the blocks come back (run_progress.counted_rows; `total`: the images to do)."""
    if explained is None:
        return 0
    return counted_rows(explained.iter_batches(batch_size=None, batch_format="pyarrow"), notify, total)


def _say(notify: Callable[[str], None] | None, message: str) -> None:
    if notify is not None:
        notify(message)


def _check_counts(workers, gpus_per_worker, batch_images, threads_per_worker, map_dtype) -> None:
    """Clear errors for counts that are not positive (GPUs may be 0 or a positive fraction)."""
    for name, value in (("workers", workers), ("batch_images", batch_images)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer; got {value!r}")
    if threads_per_worker is not None and (not isinstance(threads_per_worker, int) or threads_per_worker < 1):
        raise InputError(f"threads_per_worker must be a positive integer; got {threads_per_worker!r}")
    if not isinstance(gpus_per_worker, (int, float)) or gpus_per_worker < 0:
        raise InputError(f"gpus_per_worker must be 0 (CPU) or a positive number of GPUs; got {gpus_per_worker!r}")
    if map_dtype not in MAP_DTYPES:
        raise InputError(f"map_dtype must be one of {', '.join(MAP_DTYPES)}; got {map_dtype!r}")
