"""Turn a prepared classifier and a target layer into a verified bundle on disk."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..bundle import (EXPLAIN_GRAPH, SCORER_GRAPH, SCORER_GRAPH_FP16, SCORER_GRAPH_INT8, WEIGHTS_FILE, Bundle, Manifest,
                      head_graph_file, staged_bundle)
from ..errors import ModelLoadError
from ..graph_names import INPUT, TARGET, layer_activations
from ..images import IMAGENET_MEAN, IMAGENET_STD
from .classifier_graph import Classifier
from .explain_graph import build_explain, build_scorer
from .float16 import float16_scorer
from .head_graph import build_head, check_head, head_graph_refusal
from .layers import Layer
from .onnx_loading import model_opset
from .float16_source import float16_facts
from .quantized_graph import quantization_facts
from .weight_stash import WeightStash

FP16_SCORER_TOLERANCE = 5e-2  # export refuses a float16 scorer whose logits stray further (relative to the largest)


@dataclass
class ExportResult:
    """What an export produced: the bundle and the layer it explains (with its shape)."""

    bundle: Bundle
    layer: Layer
    picked_automatically: bool
    notes: tuple[str, ...] = ()  # what export detected: the target's layout, which model output gave the logits
    picking_rule: str = ""  # how the target was picked automatically, where a task's rule is not the classifier's
    layers: tuple[Layer, ...] = ()  # a several-layer bundle's layers in order (`layer` is the first); () for one

    def describe(self) -> str:
        rule = self.picking_rule or "the last spatial feature map before the head whose positions reach the logits"
        how = f"picked automatically: {rule}" if self.picked_automatically else "as requested"
        k, h, w = self.layer.shape[1:]
        notes = "".join(f"; {note}" for note in (self.layer.note, *self.notes) if note)
        labels = self.bundle.layer_names
        more = "".join(f"; target '{label}' (tensor '{layer.name}', K={layer.shape[1]}, {layer.shape[2]}x"
                       f"{layer.shape[3]})" for label, layer in zip(labels[1:], self.layers[1:]))
        return (f"bundle {self.bundle.path}: target '{self.bundle.manifest.target_layer}' "
                f"(tensor '{self.layer.name}', {self.layer.op_type} output, K={k}, {h}x{w}; {how}{notes}){more}")


def _cpu_session(graph: Path, origin: str, which: str):
    """An ORT CPU session for a freshly written graph; failing to load is an exporter error naming the graph."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"{origin}: ONNX Runtime cannot load the {which} graph built from it: "
                             f"{str(exc).splitlines()[0]}") from None


def _check_scorer(scorer: Path, size: tuple[int, int], origin: str):
    """Run the scorer at N=2 and N=1: a graph that hard-codes batch 1 or mixes images is refused. Returns the session."""
    session = _cpu_session(scorer, origin, "scorer")
    batch = np.random.default_rng(0).standard_normal((2, 3, *size)).astype(np.float32)
    try:
        together = session.run(None, {INPUT: batch})[0]
        alone = np.concatenate([session.run(None, {INPUT: batch[i : i + 1]})[0] for i in range(2)])
    except Exception as exc:
        raise ModelLoadError(
            f"{origin}: the model does not run with a batch of 2 images ({str(exc).splitlines()[0]}); it probably "
            f"hard-codes batch size 1 (e.g. a Reshape to [1, -1]). Re-export it with a dynamic batch axis."
        ) from None
    scale = max(float(np.abs(alone).max()), 1e-6)
    if together.shape != alone.shape or float(np.abs(together - alone).max()) > 1e-3 * scale:
        raise ModelLoadError(
            f"{origin}: logits of a batch of 2 differ from those of each image alone; the model mixes images of a "
            f"batch (training-mode BatchNorm, or a hard-coded batch size). Export it in inference mode with a dynamic batch."
        )
    return session


def _check_fp16_scorer(scorer_session, scorer_fp16: Path, size: tuple[int, int], origin: str) -> None:
    """The float16 scorer must load, run and give finite logits close to the float32 ones (overflow is refused)."""
    batch = np.random.default_rng(2).standard_normal((2, 3, *size)).astype(np.float32)
    expected = scorer_session.run(None, {INPUT: batch})[0]
    session = _cpu_session(scorer_fp16, origin, "float16 scorer")
    try:
        got = session.run(None, {INPUT: batch.astype(np.float16)})[0].astype(np.float32)
    except Exception as exc:
        raise ModelLoadError(f"{origin}: the float16 scorer fails in ONNX Runtime: {str(exc).splitlines()[0]}") from None
    scale = max(float(np.abs(expected).max()), 1e-6)
    error = float(np.abs(got - expected).max()) / scale if np.isfinite(got).all() else float("inf")
    if error > FP16_SCORER_TOLERANCE:
        raise ModelLoadError(
            f"{origin}: the float16 scorer's logits differ from float32 by {error:.3g} of their largest value "
            f"(limit {FP16_SCORER_TOLERANCE}); the model is not float16-safe (overflow?). Export without fp16_scorer."
        )


def run_explain_once(explain: Path, feed: dict[str, np.ndarray], origin: str) -> None:
    """Run a freshly written explain graph once on `feed`, so run-time failures surface at export as a
    ModelLoadError naming the source."""
    session = _cpu_session(explain, origin, "explain")
    try:
        session.run(None, feed)
    except Exception as exc:
        raise ModelLoadError(f"{origin}: the explain graph built from it fails in ONNX Runtime: "
                             f"{str(exc).splitlines()[0]}") from None


def _check_explain(explain: Path, size: tuple[int, int], origin: str) -> None:
    """Run the explain graph once (arg-max and an explicit target) so run-time failures surface at export."""
    batch = np.random.default_rng(1).standard_normal((2, 3, *size)).astype(np.float32)
    run_explain_once(explain, {INPUT: batch, TARGET: np.array([-1, 0], dtype=np.int64)}, origin)


def write_classifier_bundle(
    classifier: Classifier,
    layer: Layer | list[Layer],
    out: str | os.PathLike,
    *,
    target_label: str | list[str],
    source: str,
    source_sha256: str,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    class_names: list[str] | None = None,
    picked_automatically: bool = False,
    notes: tuple[str, ...] = (),
    fp16_scorer: bool = False,
    int8_scorer: bool = False,
    calibration=None,
) -> ExportResult:
    """Build both graphs (and with `fp16_scorer` a float16 copy of the scorer, with `int8_scorer` an INT8 one
    calibrated on `calibration`'s images or the sample photos), check them, write the bundle atomically.

    Several layers (a list of Layers, and a list of labels): one explain graph with every layer's activations and
    gradients from one backward pass (several_layers_graph.py), the manifest's extra_layers, and a head graph per
    layer (head.onnx, head_1.onnx, ...: each layer's activations -> logits) where the layer has one."""
    layers, labels, extra = layer_entries(layer, target_label, source)
    layer = layers[0]
    manifest = bundle_manifest(classifier, layer, target_label=labels[0], source=source,
                               source_sha256=source_sha256, mean=mean, std=std, class_names=class_names,
                               **({"extra_layers": extra} if extra else {}))
    int8 = None
    if int8_scorer:
        from .int8_scorer import calibration_images

        int8 = calibration_images(calibration, tuple(manifest.input_size), manifest.mean, manifest.std)
    refusal = "" if extra else head_graph_refusal(classifier, layer)  # several layers: each layer's, when written
    refusal = write_checked_graphs(out, manifest, classifier, layers if extra else layer, fp16_scorer, source,
                                   classifier.input_size, builders=(build_scorer, build_explain),
                                   checks=(_check_scorer, _check_fp16_scorer, _check_explain), int8=int8,
                                   head=None if refusal else build_head) or refusal
    head_note = ""
    if refusal:
        head_note = (f"no head graph for some target layers, so no AblationCAM or ReciproCAM on this bundle ({refusal})"
                     if extra else f"no head graph, so no AblationCAM or ReciproCAM: {refusal}")
    notes = (*notes, precision_note(manifest.source_precision), head_note)
    return ExportResult(bundle=Bundle(path=Path(out), manifest=manifest), layer=layer,
                        picked_automatically=picked_automatically, notes=tuple(note for note in notes if note),
                        layers=tuple(layers) if extra else ())


def layer_entries(layer: Layer | list[Layer], target_label: str | list[str],
                  source: str) -> tuple[list[Layer], list[str], list[dict]]:
    """(layers, labels, the manifest's extra_layers entries of the layers after the first) from one layer and its
    label or lists of both."""
    layers = [layer] if isinstance(layer, Layer) else list(layer)
    labels = [target_label] if isinstance(target_label, str) else list(target_label)
    if len(labels) != len(layers):
        raise ModelLoadError(f"{source}: {len(labels)} target labels for {len(layers)} target layers")
    extra = [{"target_layer": label, "target_tensor": more.name, "channels": int(more.shape[1]),
              "feature_size": tuple(int(v) for v in more.shape[2:])} for label, more in zip(labels[1:], layers[1:])]
    return layers, labels, extra


def precision_note(source_precision: dict | None) -> str:
    """What describe() says of an INT8 or float16 source ('' for float32)."""
    if not source_precision:
        return ""
    kind = source_precision["format"]
    if kind in ("float16", "mixed float16"):
        return f"{kind} model: gradients in float32 from the float16 activations"
    if kind == "dynamic":
        return "INT8 dynamic model: one quantization range per image, straight-through gradients"
    return f"INT8 {kind} model: straight-through gradients, the forward and the scorer the INT8 graph's"


def bundle_manifest(net, layer: Layer, *, target_label: str, source: str, source_sha256: str, mean, std,
                    class_names: list[str] | None, **extra) -> Manifest:
    """The manifest of a bundle of `net` (a Classifier or a Segmenter) explaining `layer`, after checking the class
    names against the model and the normalization; `extra` are further Manifest fields (task, output_size)."""
    if class_names is not None and len(class_names) != net.num_classes:
        raise ModelLoadError(
            f"{source}: {len(class_names)} class names given but the model has {net.num_classes} classes"
        )
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ModelLoadError(f"mean and std must be 3 numbers each (std > 0); got mean={mean}, std={std}")
    extra.setdefault("source_precision", quantization_facts(net.model) or float16_facts(net.model))
    return Manifest(
        input_size=tuple(net.input_size),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        target_layer=target_label,
        target_tensor=layer.name,
        channels=layer.shape[1],
        feature_size=tuple(layer.shape[2:]),
        num_classes=net.num_classes,
        opset=model_opset(net.model),
        source_sha256=source_sha256,
        source=source,
        class_names=list(class_names) if class_names is not None else None,
        **extra,
    )


def write_checked_graphs(out: str | os.PathLike, manifest: Manifest, net, layer: Layer, fp16_scorer: bool,
                         source: str, subject, *, builders, checks, int8=None, head=None) -> str:
    """Write the bundle of `net` (a Classifier or a Segmenter) atomically, one graph in memory at a time.

    `builders` are (scorer(net), explain(net, layer)); `checks` are (scorer(path, subject, source), returning its
    session, float16 scorer(session, path, subject, source), explain(path, subject, source)). The scorer is built, its
    weights moved to the weights file, written and checked, then with `fp16_scorer` its float16 copy, then the
    explain graph. `int8` (calibration images, their description) also writes the INT8 scorer (int8_scorer.py).
    `head(net, layer)` builds the head graph (head_graph.py), written last and checked against the explain graph; one
    that fails its check is left out (the bundle is still written) and the reason returned ('' otherwise). For several
    layers (`layer` a list) each layer's head graph is written (head_graph_file) where it can be, and the reasons of
    those that cannot are returned, each as "layer i: reason"."""
    build_scorer_model, build_explain_model = builders
    check_scorer, check_fp16_scorer, check_explain = checks
    with staged_bundle(out, manifest) as staged:
        weights = net.weights.file(staged.path(WEIGHTS_FILE))
        scorer_model = build_scorer_model(net)
        half = _float16_graph(scorer_model, net.weights) if fp16_scorer else None
        quantized = _int8_graph(scorer_model, net.weights, int8, source) if int8 is not None else None
        weights.store(scorer_model)
        scorer_session = check_scorer(staged.write(SCORER_GRAPH, scorer_model.SerializeToString()), subject, source)
        if half is not None:
            check_fp16_scorer(scorer_session, staged.write(SCORER_GRAPH_FP16, half), subject, source)
        if quantized is not None:
            _check_int8_scorer(staged.write(SCORER_GRAPH_INT8, quantized), int8[0], source)
        del scorer_model, scorer_session, half, quantized
        explain_model = build_explain_model(net, layer)
        weights.store(explain_model)
        check_explain(staged.write(EXPLAIN_GRAPH, explain_model.SerializeToString()), subject, source)
        if head is None:
            return ""
        del explain_model
        layers = layer if isinstance(layer, list) else [layer]
        explain_session = _cpu_session(staged.path(EXPLAIN_GRAPH), source, "explain")
        refusals = []
        for index, one in enumerate(layers):
            reason = head_graph_refusal(net, one) if len(layers) > 1 else ""
            if reason:
                refusals.append(f"layer {index}: {reason}")
                continue
            head_model = head(net, one)
            weights.store(head_model)
            head_path = staged.write(head_graph_file(index), head_model.SerializeToString())
            del head_model
            try:
                check_head(head_path, explain_session, subject, source,
                           **(dict(activations=layer_activations(index)) if index else {}))
            except ModelLoadError as exc:
                head_path.unlink()  # staged by this export: AblationCAM and ReciproCAM are refused, the rest still works
                refusals.append(f"layer {index}: {exc}" if len(layers) > 1 else str(exc))
    return "; ".join(refusals)


def _float16_graph(scorer_skeleton: onnx.ModelProto, weights: WeightStash) -> bytes:
    """The float16 scorer, its (halved) weights inline: converted from a copy of the scorer with its data back."""
    scorer = onnx.ModelProto()
    scorer.CopyFrom(scorer_skeleton)
    weights.put_back(scorer)
    return float16_scorer(scorer).SerializeToString()


def _int8_graph(scorer_skeleton: onnx.ModelProto, weights: WeightStash, int8, origin: str) -> bytes:
    """The INT8 scorer (int8_scorer.py), its weights inline: quantized from a copy of the scorer with its data back,
    calibrated on int8's (images, description)."""
    from .int8_scorer import int8_scorer

    images, described = int8
    scorer = onnx.ModelProto()
    scorer.CopyFrom(scorer_skeleton)
    weights.put_back(scorer)
    return int8_scorer(scorer, images, described, origin)


def _check_int8_scorer(path: Path, images: np.ndarray, origin: str) -> None:
    """ONNX Runtime must load the written INT8 scorer and give finite logits on the calibration images."""
    session = _cpu_session(path, origin, "INT8 scorer")
    try:
        got = session.run(None, {INPUT: images})[0]
    except Exception as exc:
        raise ModelLoadError(f"{origin}: the INT8 scorer fails in ONNX Runtime: {str(exc).splitlines()[0]}") from None
    if not np.isfinite(got).all():
        raise ModelLoadError(f"{origin}: the INT8 scorer gives non-finite logits on the calibration images; export "
                             f"without int8_scorer")
