"""`python -m benchmarks.quantized_maps`: how the maps of INT8 and float16 copies of a model compare with its float one.

EfficientNet-Lite0 with its ImageNet weights, exported to ONNX (float32), then quantized by ONNX Runtime (QDQ and
QOperator static, calibrated on the five sample photos; dynamic) and converted to float16 by onnxconverter-common
(all-float16). Each file is exported by fusioncam at the automatic target (the conv-head ReLU6 output, K=1280) and
explained on the five sample photos for the float32 model's top class: Grad-CAM (the explain pass: the straight-through gradient of the INT8 graph)
and Fusion-CAM in fast mode (32 channels; its scorer is the INT8/float16 graph itself). Per variant: the map
Pearson r with the float32 model's map (mean and lowest over the photos), how often its own top class is the float
model's, and the
seconds the explanations took. The correlations are reported, not asserted: they measure the model's quantization,
not fusioncam. Writes benchmarks/results/quantized-maps-cpu.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import fusioncam
from fusioncam.images import IMAGENET_MEAN, IMAGENET_STD, preprocess, sample_images

from .report import RESULTS, save_report
from .run import map_agreement

FAST_CHANNELS = 32


def _float_model(folder: Path) -> Path:
    import torch

    from fusioncam.export.model_zoo import efficientnet_lite0

    path = folder / "lite0.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(efficientnet_lite0().module, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return path


def _variants(float_path: Path, images: np.ndarray, folder: Path) -> dict[str, Path]:
    """The float file and its INT8 and float16 copies."""
    import onnx
    from onnxconverter_common import float16
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = folder / "lite0_pre.onnx"
    quant_pre_process(str(float_path), str(pre))

    class Photos(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter([{"x": images[i:i + 1]} for i in range(len(images))])

        def get_next(self):
            return next(self.rows, None)

    paths = {"float32": float_path}
    for name, fmt in (("INT8 QDQ", QuantFormat.QDQ), ("INT8 QOperator", QuantFormat.QOperator)):
        paths[name] = folder / f"lite0_{fmt.name}.onnx"
        quantize_static(str(pre), str(paths[name]), Photos(), quant_format=fmt)
    paths["INT8 dynamic"] = folder / "lite0_dynamic.onnx"
    quantize_dynamic(str(pre), str(paths["INT8 dynamic"]))
    paths["float16"] = folder / "lite0_fp16.onnx"
    onnx.save(float16.convert_float_to_float16(onnx.load(str(float_path))), str(paths["float16"]))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    photos = sample_images()
    images = np.stack([preprocess(rgb, (224, 224), IMAGENET_MEAN, IMAGENET_STD) for rgb in photos.values()])
    rows, maps = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, path in _variants(_float_model(folder), images, folder).items():
            bundle = fusioncam.export_onnx(path, folder / f"{path.stem}.fcam").bundle
            with fusioncam.Explainer(bundle, device="cpu", max_channels=FAST_CHANNELS) as explainer:
                top = np.asarray(explainer.predict(images)).argmax(axis=1)
                start = time.perf_counter()
                # every variant explains the float32 model's top class, so the maps compare one class
                targets = [int(c) for c in maps["float32"].classes] if maps else None
                explanation = explainer.explain(images, targets=targets, methods=("gradcam", "fusion"))
                seconds = time.perf_counter() - start
            maps[name] = explanation
            rows[name] = {"target": bundle.manifest.target_tensor, "seconds": seconds,
                          "source_precision": bundle.manifest.source_precision,
                          "top_classes": [int(c) for c in top]}
    exact = maps["float32"]
    for name, row in rows.items():
        for method in ("gradcam", "fusion"):
            r = [map_agreement(getattr(maps[name], method)[i], getattr(exact, method)[i])["pearson"]
                 for i in range(len(images))]
            row[f"{method}_pearson"] = r
        row["same_class"] = int(sum(a == b for a, b in zip(row["top_classes"], rows["float32"]["top_classes"])))
    report = {"benchmark": "quantized_maps", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "model": "EfficientNet-Lite0 (ImageNet weights), 224x224, automatic target", "photos": list(photos),
              "fast_channels": FAST_CHANNELS, "variants": rows}
    lines = ["| variant | Grad-CAM r mean (min) | Fusion-CAM fast r mean (min) | same top class | seconds |",
             "|---|---|---|---|---|"]
    for name, row in rows.items():
        g, f = row["gradcam_pearson"], row["fusion_pearson"]
        lines.append(f"| {name} | {np.mean(g):.3f} ({min(g):.3f}) | {np.mean(f):.3f} ({min(f):.3f}) | "
                     f"{row['same_class']}/{len(images)} | {row['seconds']:.1f} |")
    save_report(RESULTS, "quantized-maps-cpu", report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
