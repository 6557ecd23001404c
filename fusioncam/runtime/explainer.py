"""`Explainer`: Fusion-CAM and its family for a batch of images on ONNX Runtime, every heavy step on the chosen device."""

from __future__ import annotations

import logging
import os
from typing import ContextManager, Mapping, Sequence

import numpy as np

from .. import arguments
from ..bundle import Bundle, CarriesBundle, bundle_of, load_bundle
from ..errors import InputError, NonFiniteError
from ..graph_names import LOGITS, layer_activations, layer_gradients
from ..memory_budget import check_batch_fits
from ..tasks import Prediction, Task, task_for
from .backend import Backend
from .head_session import HeadSession
from .derived_graphs import DerivedGraphs
from .device_select import Device, select_device
from .explanation import Explanation
from .input_checks import check_images
from .methods import Engine, MethodOutput, check_methods, run_methods
from .methods.compat import check_compat
from .methods.comparison_passes import comparison_explainer
from .int8_sweep import float32_scoring, int8_rescore_of
from .scorer import Scorer
from .layer_aggregation import aggregate_layers, attribution_weights
from .several_layers import (check_several_layer_methods, layer_comparisons, layer_count, layer_view,
                             shared_comparisons)

log = logging.getLogger("fusioncam")

DEFAULT_BATCH = {"cpu": 16, "cuda": 256}
PRECISIONS = ("fp32", "tf32", "fp16", "int8")


class Explainer:
    """Explains images with Fusion-CAM, Grad-CAM, Grad-CAM++, XGrad-CAM, Score-CAM, Group-CAM and Union-CAM from a bundle.

    What is explained is the bundle's task (fusioncam/tasks/: a class per image, or a class over a region for a
    segmentation model); the Explainer itself has no task-specific code: it asks `self.task`.

    Lifecycle: construction loads the bundle (verifying its files), creates the two ONNX Runtime sessions
    (explain graph and scorer) and the scorer's input buffer on the chosen device, and scores what of the
    all-zeros image z0 is the same for every call (a classifier's logits of z0, every method's baseline p(z0));
    nothing else runs until a call. `close()`, or leaving a
    `with Explainer(...) as explainer:` block, releases the sessions and device buffers; any later call raises
    ClosedError. close() is idempotent.

    Threads: one Explainer may be shared by several threads. Its calls (explain, explain_files, warm_up, and
    the metrics' scorer runs) are serialised by an internal lock, because they share the scorer's input
    buffer, the CUDA backend's bound buffers and its stream; each call's maps are the ones it would get alone,
    bit for bit. Calls do not run in parallel on one Explainer (ONNX Runtime already uses every CPU core, or the
    whole GPU, for one scorer run); for parallel work, give each worker its own Explainer.
    """

    def __init__(self, bundle: str | os.PathLike | Bundle | CarriesBundle, device: str = "auto", batch_size: int | None = None,
                 precision: str = "fp32", theta: float = 10.0, skip_constant_channels: bool = True,
                 max_channels: int | None = None, cuda_options: Mapping[str, str] | None = None,
                 compat: str | None = None, int8_rescore: int | None = None) -> None:
        """bundle: a bundle directory, a loaded Bundle, or the ExportResult an export returned.

        precision: fp32, tf32 (CUDA), fp16 (the bundle's float16 scorer; export with fp16_scorer=True) or int8 (CPU:
        the bundle's INT8 scorer for the Score-CAM-family forwards; export with int8_scorer=True; gradients stay fp32).

        int8_rescore (precision="int8" only; None: DEFAULT_INT8_RESCORE): the Score-CAM sweep's channels per image
        whose INT8 scores are replaced by the float32 scorer's, those with the highest INT8 scores; z0 and the
        methods' probes are scored in float32 too (runtime/int8_sweep.py). 0: every sweep forward INT8.

        max_channels (fast mode, beyond the paper): the Score-CAM sweep scores only the k channels with the largest
        Grad-CAM contribution relu(w_k) * mean(A_k) per image (see runtime/channel_selection.py); the others get
        Score-CAM weight 0. None, or k >= K, is the exact algorithm.

        cuda_options: extra ONNX Runtime CUDA provider options (e.g. {"prefer_nhwc": "1"}, {"gpu_mem_limit": ...}),
        over fusioncam's own; ignored on the CPU.

        compat: None (default) follows the methods' authors' code; "pytorch-grad-cam" gives pytorch-grad-cam's
        Grad-CAM++ and Score-CAM maps (1e-6 in Grad-CAM++'s alpha denominator; Score-CAM masks upsampled with
        align_corners=True, and its map's ReLU before the upsampling), on which Fusion-CAM and Union-CAM then
        build; classifier bundles only; see runtime/methods/compat.py.
        """
        bundle = bundle_of(bundle)
        arguments.explainer_arguments(bundle, device, batch_size, precision, theta, skip_constant_channels,
                                      max_channels, cuda_options)
        self.compat = check_compat(compat)
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.task: Task = task_for(self.bundle.manifest.task)
        if self.compat is not None and self.task.compat_note is not None:
            raise InputError(f"compat={self.compat!r} applies to classifier bundles; {self.bundle.path} is a "
                             f"{self.task.name} bundle, {self.task.compat_note}; leave compat=None")
        if precision not in PRECISIONS:
            raise InputError(f"precision '{precision}' is not available; choose one of {', '.join(PRECISIONS)}")
        if precision == "fp16" and self.bundle.scorer_fp16_path is None:
            raise InputError(f"precision 'fp16' needs a float16 scorer, and bundle {self.bundle.path} has none; re-export "
                             f"it with fp16_scorer=True (fusioncam export ... --fp16-scorer)")
        if precision == "int8" and self.bundle.scorer_int8_path is None:
            raise InputError(f"precision 'int8' needs an INT8 scorer, and bundle {self.bundle.path} has none; re-export "
                             f"it with int8_scorer=True (fusioncam export ... --int8-scorer)")
        if not 0.0 <= float(theta) <= 100.0:
            raise InputError(f"theta is a percentile and must be in [0, 100]; got {theta}")
        self.precision = precision
        self.int8_rescore = int8_rescore_of(precision, int8_rescore)
        self.device: Device = select_device(device)
        if precision == "int8" and self.device.kind != "cpu":
            raise InputError("precision 'int8' runs the INT8 scorer on the CPU (ONNX Runtime's CUDA provider has no "
                             "fast kernels for its QDQ graph); use device='cpu', or fp16/tf32 on the GPU")
        batch_size = batch_size or DEFAULT_BATCH[self.device.kind]
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be a positive number of masked images per scorer run; got {batch_size}")
        self.batch_size = int(batch_size)
        check_batch_fits(self.batch_size, self.bundle.manifest.input_size, self.device.kind, self.device.index)
        self.theta = float(theta)
        self.skip_constant_channels = skip_constant_channels
        if max_channels is not None and (isinstance(max_channels, bool) or not isinstance(max_channels, (int, np.integer))
                                         or max_channels < 1):
            raise InputError(f"max_channels must be a positive number of channels (or None for all); got {max_channels}")
        self.max_channels = None if max_channels is None else int(max_channels)
        self.cuda_options = {str(key): str(value) for key, value in (cuda_options or {}).items()}
        self.backend: Backend = self._make_backend()
        # The batched scorer service, shared with the metrics; its lock serialises every call on this Explainer.
        self.scorer = Scorer(self.backend, f"Explainer for {self.bundle.path}", self.task)
        # the head graph of each target layer, opened by AblationCAM or ReciproCAM on first use
        self._heads = [HeadSession(self.bundle, index) for index in range(layer_count(self.bundle))]
        self._derived = DerivedGraphs(self.bundle)  # FullGrad's and ShapleyCAM's graphs, built on first use
        with self.backend.context():  # what of z0 every call shares (None where it depends on the call's targets)
            with float32_scoring(self.scorer):
                self._z0_constant = self.task.constant_baseline(self.scorer)

    def _in_use(self, action: str = "explain") -> ContextManager[Scorer]:
        """Hold the call lock and make the device current; a ClosedError if close() already ran."""
        return self.scorer.in_use(action)

    @property
    def closed(self) -> bool:
        """True once close() has released the sessions and buffers."""
        return self.scorer.closed

    def close(self) -> None:
        """Release the ONNX Runtime sessions and the device buffers (waits for a call in progress to finish).
        Calling it again does nothing; using the Explainer afterwards raises ClosedError."""
        self.scorer.close()
        for head in self._heads:
            head.close()
        self._derived.close()
        self._z0_constant = None

    def __enter__(self) -> "Explainer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _zero_image(self):
        """The all-zeros input z0 [1, 3, H, W] on the backend's device."""
        return self.backend.asarray(np.zeros((1, 3, *self.bundle.manifest.input_size), dtype=np.float32))

    @property
    def segmentation(self) -> bool:
        """True for a segmentation bundle (a class over a region per image; fusioncam/tasks/segmentation.py)."""
        return self.task.name == "segmentation"

    def _make_backend(self) -> Backend:
        """The CPU or CUDA backend for the selected device (one per device, for every task)."""
        if self.device.kind == "cpu":
            from .cpu_backend import CpuBackend

            return CpuBackend(self.bundle, self.task, self.batch_size, fp16=self.precision == "fp16",
                              int8=self.precision == "int8", int8_rescore=self.int8_rescore or 0)
        from .cuda_backend import CudaBackend

        return CudaBackend(self.bundle, self.task, self.batch_size, self.device.index, tf32=self.precision == "tf32",
                           fp16=self.precision == "fp16", provider_options=self.cuda_options)

    def _device_feed(self, feed: Mapping[str, np.ndarray]) -> dict:
        """The task's explain-graph target inputs on the backend's device."""
        return {name: self.backend.asarray(value) for name, value in feed.items()}

    def warm_up(self) -> "Explainer":
        """Run the explain graph once and the scorer at every run size it can use, so the first explanations
        are as fast as the later ones (on the GPU each new shape pays cuDNN's algorithm search). Returns self."""
        with self._in_use("warm up"):
            feed = self.task.explain_feed(self.bundle.manifest, 1, None, None, self.class_names)
            self.backend.explain(self._zero_image(), self._device_feed(feed))
            self.backend.warm_up()
        return self

    def predict(self, images) -> Prediction:
        """The model's prediction for preprocessed images [N,3,H,W] without an explanation, on the host: a
        classifier's logits [N, C], softmax probabilities and top classes [N]; a segmentation model's per-pixel
        class scores [N, C, H', W'], their softmax over classes and the predicted class of every output pixel
        (fusioncam.tasks.Prediction). np.asarray(prediction) is its logits."""
        images = arguments.image_array("images", images)
        images = check_images(images, self.bundle.manifest.input_size)
        with self._in_use("predict"):
            return self.task.predict(self.scorer, self.backend.asarray(images))

    @property
    def class_names(self) -> list[str] | None:
        return self.bundle.manifest.class_names

    def explain(self, images, targets=None, methods: str | Sequence[str] = ("fusion",),
                names: Sequence[str] | None = None, on_batch=None, regions=None, instances=None) -> Explanation:
        """The chosen methods' maps of preprocessed images [N,3,H,W] (NumPy, or CuPy on the GPU path) for the targets.

        methods: any of METHODS (gradcam, gradcam++, xgradcam, scorecam, groupcam, unioncam, fusion, hirescam,
        gradcam-elementwise, layercam, eigencam, eigengradcam, kpcacam, finercam); they share one explain pass, one
        Score-CAM sweep and their scorer batches. `on_batch(done, total)` is called after
        each scorer batch of the Score-CAM sweep (for progress bars).

        regions (segmentation bundles only): where the class is explained, per image or for all: "predicted"
        (None, the default: where the model predicts the class), "all", a box (x0, y0, x1, y1) or a mask [H, W];
        targets=None then explains the class predicted on most pixels (docs/segmentation.md).

        instances (detection bundles only; fusioncam/tasks/detection.py): which detections to explain, one row of
        the result per instance: None (every detection kept above a score threshold after NMS), an
        InstanceSelection, or per image a list of anchor indices or (class, box) pairs.

        A bundle with several target layers (export_torch(model, ["layer3", "layer4"], ...)) is explained in the same
        one explain pass, one engine per layer (each layer's own Score-CAM sweep); `result.layer_maps` holds each
        layer's maps and `result.maps` their aggregate (runtime/layer_aggregation.py: pytorch-grad-cam's with
        compat="pytorch-grad-cam", else the mean scaled to [0, 1]). AblationCAM and ReciproCAM run each layer's head
        graph; FullGrad and ShapleyCAM, whose graphs are derived from one layer's, are refused on it.

        The targets (and regions) are read by the bundle's task (Task.explain_feed), which also shapes the result:
        an Explanation, a segmentation bundle's SegmentationExplanation (with region_weights), or a detection
        bundle's DetectionExplanation (one row per instance).
        """
        images = arguments.image_array("images", images)
        methods = check_methods(arguments.method_names("methods", methods))
        check_several_layer_methods(self.bundle, methods)
        arguments.callable_or_none("on_batch", on_batch)
        manifest = self.bundle.manifest
        images = check_images(images, manifest.input_size)
        n = int(images.shape[0])
        names = list(names) if names is not None else [f"image {i}" for i in range(n)]
        feed = self.task.explain_feed(manifest, n, targets, regions, self.class_names)
        expand = getattr(self.task, "explained_rows", None)  # tasks with several rows per image (Task protocol)
        if instances is not None and expand is None:
            raise InputError(f"instances= applies to detection bundles; this bundle explains a {self.task.name} task")
        with self._in_use():
            images = self.backend.asarray(images)
            if expand is not None:
                index, feed, names = expand(self.scorer, images, feed, instances, names, manifest, self.class_names)
                if len(index) == 0:  # nothing to explain (no detection above the threshold): an empty result
                    return self.task.explanation(
                        dict(maps={m: np.zeros((0, *manifest.input_size), np.float32) for m in methods},
                             timings={}, device=str(self.device), class_names=self.class_names,
                             num_classes=manifest.num_classes), None, self.backend.xp, self.backend.to_host)
                images = images[self.backend.asarray(index)]
            return self._explain_on_device(images, self._device_feed(feed), names, methods, on_batch)

    def _explain_on_device(self, images, feed: dict, names: list[str], methods: tuple[str, ...],
                           on_batch=None) -> Explanation:
        """One explain pass, then the methods over one shared engine (the algorithm page, batched over images); on a
        several-layer bundle one engine per layer over the same pass (several_layers.py)."""
        backend, kernels, task = self.backend, self.backend.kernels, self.task
        layers = layer_count(self.bundle)
        clock = backend.clock()
        clock.start("explain_pass")
        bad = kernels.nonfinite_rows(images)
        graph = backend.explain(images, feed)
        maps = [graph[name(i)] for i in range(layers) for name in (layer_activations, layer_gradients)]
        bad = bad | kernels.nonfinite_rows(graph[LOGITS], *maps)
        clock.stop("explain_pass")
        self._raise_if_nonfinite(backend.to_host(bad), names)
        task.check_explained(lambda name: backend.to_host(graph[name]), names, self.bundle.class_name)
        targets = task.image_targets(graph)
        with float32_scoring(self.scorer):  # precision="int8": z0 exact (runtime/int8_sweep.py)
            baseline = task.baseline(self.scorer, targets, self._z0_constant, clock)
        comparisons = comparison_explainer(backend.explain, feed, graph)
        if layers > 1:
            comparisons = shared_comparisons(comparisons)
        engines, layer_outputs = [], []
        for index in range(layers):
            engine = Engine(self.scorer, images, layer_view(graph, index), targets, baseline, self.theta,
                            self.skip_constant_channels, clock, on_batch, self.max_channels, compat=self.compat,
                            explain_classes=layer_comparisons(comparisons, index), head=self._heads[index],
                            derived=self._derived)
            outputs = run_methods(engine, methods)
            bad_maps = {name: backend.to_host(kernels.nonfinite_rows(out.map)) for name, out in outputs.items()}
            for name, bad in bad_maps.items():
                self._raise_if_nonfinite(bad, names, f"the {name} map of")
            engines.append(engine)
            layer_outputs.append(outputs)
        return self._explanation(engines, layer_outputs, graph)

    def _explanation(self, engines: list[Engine], layer_outputs: list[dict[str, MethodOutput]],
                     graph: dict) -> Explanation:
        """Everything computed, copied to the host (what did not run stays None); the task adds its own fields
        (classes, probabilities, logits, ...) from the explain pass's outputs. Several layers: `maps` aggregated
        over the layers (layer_aggregation.py), `layer_maps` each layer's, the rest the first layer's, the sweep's
        forward counts summed over the layers."""
        engine, outputs = engines[0], layer_outputs[0]
        backend = self.backend
        copies: dict[tuple[int, np.dtype], np.ndarray] = {}

        def host(array, dtype=np.float32):
            """Each device array copied to the host once (a map can appear under two names)."""
            if array is None:
                return None
            key = (id(array), np.dtype(dtype))
            if key not in copies:
                copies[key] = backend.to_host(array).astype(dtype, copy=False)
            return copies[key]

        def host_facts(facts: dict) -> dict:
            """A method's facts (device arrays, or dicts of them) on the host, each dtype kept."""
            return {key: host_facts(value) if isinstance(value, dict) else backend.to_host(value)
                    for key, value in facts.items()}

        sweeps = [one.computed("sweep") for one in engines if one.computed("sweep") is not None]
        forwards_run = sum(host(sweep.forwards_run, np.int64) for sweep in sweeps) if sweeps else None
        forwards_skipped = sum(host(sweep.forwards_skipped, np.int64) for sweep in sweeps) if sweeps else None
        timings = engine.clock.totals()
        timings["total"] = sum(timings.values())
        timings["scorer_forwards_run"] = int(forwards_run.sum()) if forwards_run is not None else 0
        timings["scorer_forwards_skipped"] = int(forwards_skipped.sum()) if forwards_skipped is not None else 0
        timings["method_forwards_run"] = int(sum(one.probe_rows for one in engines))
        layer_maps = {}
        if len(engines) > 1:
            labels = self.bundle.layer_names
            layer_maps = {label: {name: backend.to_host(out.map).astype(np.float32, copy=False)
                                  for name, out in per_layer.items()}
                          for label, per_layer in zip(labels, layer_outputs)}
            sizes = self.bundle.layer_feature_sizes
            weights = None
            if getattr(self.task, "layers_weighted_by_attribution", False):  # Task protocol, optional member
                passes = [(graph[layer_activations(i)], graph[layer_gradients(i)]) for i in range(len(engines))]
                weights = attribution_weights(engine.xp, passes, backend.to_host)
            maps = {name: aggregate_layers(name, [layer_maps[label][name] for label in labels], sizes, self.compat,
                                           weights)
                    for name in outputs}
        else:
            maps = {name: host(out.map) for name, out in outputs.items()}
        fields = dict(
            maps=maps, layer_maps=layer_maps,
            timings=timings,
            method_maps={name: {key: host(m) for key, m in out.maps.items()} for name, out in outputs.items()},
            facts={name: host_facts(out.facts) for name, out in outputs.items()},
            shared={name: host(engine.computed(name)) for name in Engine.SHARED_MAPS
                    if engine.computed(name) is not None},
            forwards_run=forwards_run, forwards_skipped=forwards_skipped,
            device=str(self.device), class_names=self.class_names,
        )
        return self.task.explanation(fields, graph, engine.xp, backend.to_host)

    @staticmethod
    def _raise_if_nonfinite(bad: np.ndarray, names: list[str],
                            where: str = "the input, logits, activations or gradients of") -> None:
        """A clear error naming every image whose input, logits, activations or gradients (or a map) are not finite."""
        if bad.any():
            which = ", ".join(names[i] for i in np.flatnonzero(bad))
            raise NonFiniteError(
                f"non-finite values (NaN or infinity) in {where}: {which}. "
                f"Check the preprocessing of these images and the model's numerical stability."
            )

    def explain_files(self, paths: Sequence[str | os.PathLike], targets=None,
                      methods: str | Sequence[str] = ("fusion",), regions=None) -> Explanation:
        """Read, convert and preprocess image files with the bundle's size/mean/std, then explain them."""
        from ..images import load_batch

        paths = arguments.path_list("paths", paths)
        manifest = self.bundle.manifest
        images, _ = load_batch(list(paths), manifest.input_size, manifest.mean, manifest.std)
        return self.explain(images, targets, methods=methods, names=[str(p) for p in paths], regions=regions)
