"""`int8_scorer`: the scorer graph quantized with ONNX Runtime's static quantization (beyond the paper, like the
float16 scorer), for `Explainer(precision="int8")` on the CPU, where INT8 convolutions (AVX-512 VNNI, AVX2) run
faster than float32 ones and the Score-CAM sweep is hundreds of scorer forwards.

QDQ format (QuantizeLinear/DequantizeLinear pairs, which ONNX Runtime's CPU provider fuses into integer kernels),
weights int8 per output channel, activations uint8 per tensor (the U8S8 pair the CPU's integer dot products take),
ranges calibrated by min/max on images: the user's (`calibration`: files or folders) or the five sample photos,
plus the all-zeros image every Score-CAM sweep scores. The input stays float32 ([N,3,H,W], named `input`) and the
output float32 logits: the runtime feeds it as it feeds the float scorer. The calibration used is recorded in the
graph's metadata (`fusioncam.int8_calibration`), which the bundle's manifest covers by the file's hash.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from ..errors import InputError, ModelLoadError
from ..graph_names import INPUT

CALIBRATION_METADATA = "fusioncam.int8_calibration"
CALIBRATION_BATCH = 4  # images per calibration run
NODE_GROUPS = ("first_conv", "depthwise", "classifier")  # what Int8Settings.float_nodes may keep in float32


@dataclass(frozen=True)
class Int8Settings:
    """How the scorer is quantized: ONNX Runtime's calibration method (MinMax, Percentile, Entropy), per-channel or
    per-tensor weights, uint8 or int8 (symmetric) activations, reduce_range (7-bit weights), and which node groups
    stay float32 (`float_nodes`, from NODE_GROUPS: the first convolution, the depthwise convolutions, the last
    Gemm/MatMul; `float_node_prefixes`: every node whose name in the pre-processed scorer starts with one of them,
    e.g. "/model/_conv_stem/" for a block, as benchmarks/int8_sensitivity.py ranks them). The default is the fastest
    on this project's CPU; benchmarks/int8_settings.py measures the others (map correlation with exact float32 and
    speed)."""

    method: str = "MinMax"
    percentile: float = 99.999  # with method Percentile: the share of |values| each range keeps
    per_channel: bool = True
    symmetric_activations: bool = False
    reduce_range: bool = False
    float_nodes: tuple[str, ...] = ()
    float_node_prefixes: tuple[str, ...] = ()

    def describe(self) -> str:
        """The settings in words, for the graph's metadata and the reports."""
        method = f"Percentile {self.percentile:g}" if self.method == "Percentile" else self.method
        words = [f"{method} ranges", "per-channel" if self.per_channel else "per-tensor",
                 "int8 symmetric activations" if self.symmetric_activations else "uint8 activations"]
        if self.reduce_range:
            words.append("reduce_range")
        if self.float_nodes:
            words.append("float32 " + ", ".join(self.float_nodes))
        if self.float_node_prefixes:
            words.append("float32 nodes " + ", ".join(f"{prefix}*" for prefix in self.float_node_prefixes))
        return ", ".join(words)


def _float_node_names(model: onnx.ModelProto, groups: Sequence[str]) -> list[str]:
    """Names of the nodes the groups (NODE_GROUPS, checked by int8_scorer) keep in float32 (Int8Settings.float_nodes)."""
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    names: list[str] = []
    if "first_conv" in groups and convs:
        names.append(convs[0].name)
    if "depthwise" in groups:
        names += [node.name for node in convs if any(a.name == "group" and a.i > 1 for a in node.attribute)]
    if "classifier" in groups:
        linear = [node.name for node in model.graph.node if node.op_type in ("Gemm", "MatMul")]
        names += linear[-1:]
    return names


def _prefixed_node_names(model: onnx.ModelProto, prefixes: Sequence[str], origin: str) -> list[str]:
    """Names of the nodes starting with one of `prefixes` (Int8Settings.float_node_prefixes); a prefix no node name
    starts with is an InputError naming a few of the graph's node names."""
    names = [node.name for node in model.graph.node]
    unmatched = [prefix for prefix in prefixes if not any(name.startswith(prefix) for name in names)]
    if unmatched:
        raise InputError(f"Int8Settings.float_node_prefixes: no node of {origin}'s scorer starts with "
                         f"{', '.join(repr(prefix) for prefix in unmatched)}; its nodes are named like "
                         f"{', '.join(repr(name) for name in names[:4])}")
    return [name for name in names if any(name.startswith(prefix) for prefix in prefixes)]


def calibration_images(calibration: str | os.PathLike | Sequence[str | os.PathLike] | None, size: tuple[int, int],
                       mean, std) -> tuple[np.ndarray, str]:
    """(float32 [N,3,H,W] preprocessed calibration images, the all-zeros image last; what they were, in words).
    `calibration`: None (the five sample photos of scikit-image), an image file, a folder, a glob, or a list of them."""
    from ..images import load_batch, preprocess, sample_images

    if calibration is None:
        photos = sample_images()
        batch = np.stack([preprocess(rgb, size, mean, std) for rgb in photos.values()])
        described = f"the {len(photos)} sample photos ({', '.join(photos)})"
    else:
        from ..cli.shared import expand_inputs

        given = [calibration] if isinstance(calibration, (str, os.PathLike)) else list(calibration)
        if not given:
            raise InputError("calibration is an empty list; give image files or folders, or None for the sample photos")
        files = expand_inputs([str(item) for item in given])
        batch, _ = load_batch(files, size, mean, std)
        described = f"{len(files)} image file(s) from {', '.join(str(item) for item in given)[:200]}"
    zeros = np.zeros((1, *batch.shape[1:]), dtype=np.float32)
    return np.concatenate([batch, zeros]), described + " and the all-zeros image"


class _WithoutPreprocessingHint(logging.Filter):
    """Drops the quantizer's advice to run its shape pre-processing, logged on the root logger at every export (the
    scorer fusioncam builds has its shapes inferred already)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()


class _Batches:
    """onnxruntime.quantization's CalibrationDataReader over a float32 array, `batch` images at a time (the
    histogram calibrators, Percentile and Entropy, need every run the same size: they take one image a time)."""

    def __init__(self, images: np.ndarray, batch: int = CALIBRATION_BATCH) -> None:
        self._runs = iter([images[i : i + batch] for i in range(0, len(images), batch)])

    def get_next(self) -> dict | None:
        batch = next(self._runs, None)
        return None if batch is None else {INPUT: np.ascontiguousarray(batch)}


def _preprocessed(source: Path, target: Path, large: bool) -> Path:
    """The quantizer's pre-processing (ONNX Runtime's basic float optimizations and shape inference): among others it
    folds explicit zero Pads into the next Conv, which would otherwise stay float between DequantizeLinear and
    QuantizeLinear and keep ONNX Runtime from fusing integer kernels (measured on EfficientNet-Lite0's scorer, 2
    threads: 10.3 images/s without it, 20.7 with it, float32 8.8). `source` as it was where it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(source), str(target), skip_symbolic_shape=True, save_as_external_data=large)
    except Exception:  # an optimization, not a requirement: quantize the graph as built
        return source
    return target


def int8_scorer(scorer: onnx.ModelProto, images: np.ndarray, described: str, origin: str,
                settings: Int8Settings = Int8Settings()) -> bytes:
    """The QDQ INT8 copy of `scorer` (weights inline, input `input`, one output), calibrated on `images` as
    `settings` say, serialized. A model ONNX Runtime cannot quantize is a ModelLoadError naming `origin`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if settings.method not in ("MinMax", "Percentile", "Entropy"):
        raise InputError(f"Int8Settings.method {settings.method!r} is not a calibration method; choose MinMax, "
                         f"Percentile or Entropy")
    if not 50.0 < settings.percentile <= 100.0:
        raise InputError(f"Int8Settings.percentile must be in (50, 100]; got {settings.percentile}")
    unknown = [group for group in settings.float_nodes if group not in NODE_GROUPS]
    if unknown:
        raise InputError(f"Int8Settings.float_nodes: unknown group(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(NODE_GROUPS)}")

    with tempfile.TemporaryDirectory(prefix="fusioncam-int8-") as folder:
        source, target = Path(folder) / "scorer.onnx", Path(folder) / "scorer_int8.onnx"
        large = scorer.ByteSize() > 1_800_000_000  # protobuf's 2 GB limit: weights beside the graph
        onnx.save(scorer, str(source), save_as_external_data=large)
        source = _preprocessed(source, Path(folder) / "scorer_pre.onnx", large)
        graph = onnx.load(str(source), load_external_data=False)
        excluded = _float_node_names(graph, settings.float_nodes)
        excluded += _prefixed_node_names(graph, settings.float_node_prefixes, origin)
        hint = _WithoutPreprocessingHint()
        logging.getLogger().addFilter(hint)
        try:
            quantize_static(str(source), str(target),
                            _Batches(images, CALIBRATION_BATCH if settings.method == "MinMax" else 1),
                            quant_format=QuantFormat.QDQ, per_channel=settings.per_channel,
                            activation_type=QuantType.QInt8 if settings.symmetric_activations else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, reduce_range=settings.reduce_range,
                            calibrate_method=getattr(CalibrationMethod, settings.method), nodes_to_exclude=excluded,
                            extra_options={"ActivationSymmetric": settings.symmetric_activations,
                                           "CalibPercentile": settings.percentile},
                            use_external_data_format=large)
        except Exception as exc:  # ONNX Runtime's quantizer: any failure names the model, not its internals
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelLoadError(f"{origin}: ONNX Runtime's static quantization cannot quantize its scorer ({reason}); "
                                 f"export without int8_scorer") from None
        finally:
            logging.getLogger().removeFilter(hint)
        quantized = onnx.load(str(target))
    entry = quantized.metadata_props.add()
    entry.key, entry.value = CALIBRATION_METADATA, f"{settings.describe()}, calibrated on {described}"
    return quantized.SerializeToString()


def int8_agreement(float_logits: np.ndarray, int8_logits: np.ndarray) -> dict:
    """How the INT8 scorer's logits compare with the float scorer's on the same images: the largest difference
    relative to the largest float logit, and the fraction of images with the same top class."""
    scale = max(float(np.abs(float_logits).max()), 1e-6)
    return {"max_relative_difference": float(np.abs(int8_logits - float_logits).max()) / scale,
            "top1_agreement": float((int8_logits.argmax(1) == float_logits.argmax(1)).mean())}
