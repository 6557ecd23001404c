"""The shipped rapidocr graphs as fusioncam sees them: where their scores are, their bundles, forward parity and the
finite-difference check of each bundle's gradient (used by the third-party-graphs study and its tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import fusioncam
from fusioncam.bundle import load_bundle
from fusioncam.export.segmentation_export import export_onnx_segmentation

from .graph_cut_gradients import GradientCheck, check_gradient
from .ocr_inputs import CLASSIFIER_SIZE, LABELS, MEAN, STD

# The classifier's automatic target is its stem's first ReLU (relu_0.tmp_0, 8 x 24 x 96): the automatic choice keeps
# maps shaped like the 48 x 192 input (aspect within 1.5x), and from the second stage on this network strides by
# (2, 1) (the last maps are 2 x 96). The study explains its last feature map and checks gradients at three layers.
CLASSIFIER_LAYERS = {"automatic": "relu_0.tmp_0", "middle": "hardswish_6.tmp_0", "last": "hardswish_17.tmp_0"}
CLASSIFIER_EXPLAINED = "last"
# DBNet's automatic target is the head's last ReLU before its final ConvTranspose; the earlier one is the neck's
# fused 4-scale map (96 channels at 1/4 resolution), whose gradient passes through both ConvTransposes.
DETECTOR_LAYERS = {"automatic": "batch_norm_1.tmp_4", "neck": "p2o.Concat.1"}


def scores_tensor(model: onnx.ModelProto) -> str:
    """The tensor fusioncam differentiates in a shipped graph: its first output, before a final Softmax (the
    classifier's logits) or Sigmoid (DBNet's pre-sigmoid logit)."""
    made_by = {out: node for node in model.graph.node for out in node.output}
    name = model.graph.output[0].name
    while name in made_by and made_by[name].op_type in ("Identity", "Softmax", "Sigmoid"):
        name = made_by[name].input[0]
    return name


def shipped_session(path: Path) -> ort.InferenceSession:
    """ONNX Runtime on the shipped file, unchanged."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def export_classifier(path: Path, out: Path, layer: str) -> fusioncam.ExportResult:
    """A classification bundle of the shipped orientation classifier at `layer`, rapidocr's preprocessing."""
    return fusioncam.export_onnx(path, out, layer, input_size=CLASSIFIER_SIZE, mean=MEAN, std=STD,
                                 class_names=list(LABELS))


def export_detector(path: Path, out: Path, input_size: tuple[int, int], layer: str | None) -> fusioncam.ExportResult:
    """A segmentation bundle of the shipped DBNet at `input_size` (the binary map read as background / text)."""
    return export_onnx_segmentation(path, out, layer, input_size=input_size, mean=MEAN, std=STD,
                                    class_names=["background", "text"])


@dataclass(frozen=True)
class BundleGradient:
    """One explain pass of a bundle on one image: what the finite-difference check needs, and the forward's parity."""

    image: np.ndarray  # the preprocessed image [3, H, W]
    activations: np.ndarray  # [K, h, w]
    gradients: np.ndarray  # [K, h, w]
    seed: np.ndarray  # what the scores are weighted by: one-hot [C], or region weights [1, H', W']
    target: int
    forward_error: float  # max |bundle's scores - shipped graph's scores| / max |shipped|


def classifier_gradient(bundle_dir: Path, shipped: Path, image: np.ndarray) -> BundleGradient:
    """The explain graph's gradient of the predicted class's logit for `image` [3, 48, 192], and its logits against
    the shipped graph's softmax input."""
    session = ort.InferenceSession(str(load_bundle(bundle_dir).explain_path), providers=["CPUExecutionProvider"])
    logits, acts, grads, used = session.run(["logits", "activations", "gradients", "target_used"],
                                            {"input": image[None], "target": np.array([-1])})
    model = onnx.load(str(shipped))
    want = _shipped_tensor(model, scores_tensor(model), image)
    seed = np.zeros(logits.shape[1], np.float64)
    seed[int(used[0])] = 1.0
    return BundleGradient(image, acts[0], grads[0], seed, int(used[0]), _relative(logits, want))


def detector_gradient(bundle_dir: Path, shipped: Path, image: np.ndarray, region: np.ndarray) -> BundleGradient:
    """The explain graph's gradient of the text class's region score for `image` [3, H, W] over `region` [H, W], and
    its text logit against the shipped graph's pre-sigmoid logit."""
    session = ort.InferenceSession(str(load_bundle(bundle_dir).explain_path), providers=["CPUExecutionProvider"])
    logits, acts, grads, weights = session.run(
        ["logits", "activations", "gradients", "region_weights"],
        {"input": image[None], "target": np.array([1]), "region": region[None].astype(np.float32)})
    model = onnx.load(str(shipped))
    want = _shipped_tensor(model, scores_tensor(model), image)
    return BundleGradient(image, acts[0], grads[0], weights[0][None], 1, _relative(logits[:, 1:2], want))


def finite_difference_check(shipped: Path, layer: str, found: BundleGradient, **options) -> GradientCheck:
    """`found`'s gradient against central differences of the shipped graph cut at `layer` (graph_cut_gradients)."""
    model = onnx.load(str(shipped))
    return check_gradient(model, found.image, layer, scores_tensor(model), found.activations, found.gradients,
                          found.seed, **options)


def _shipped_tensor(model: onnx.ModelProto, name: str, image: np.ndarray) -> np.ndarray:
    """Tensor `name` of the shipped graph on `image`, made a graph output (nothing else changed)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {model.graph.input[0].name: image[None]})[0]


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-30))


__all__ = ["CLASSIFIER_EXPLAINED", "CLASSIFIER_LAYERS", "DETECTOR_LAYERS", "BundleGradient", "classifier_gradient",
           "detector_gradient", "export_classifier", "export_detector", "finite_difference_check", "scores_tensor",
           "shipped_session"]
