"""Real third-party ONNX graphs explained as shipped: rapidocr's text-orientation classifier and PP-OCRv4 DBNet.

    python -m benchmarks.faithfulness.third_party_graphs [--quick]

needs the graphs of rapidocr-onnxruntime 1.4.4 (benchmarks/faithfulness/rapidocr_models.py says how to get them:
`pip download --no-deps rapidocr-onnxruntime==1.4.4 -d ~/.cache/fusioncam/rapidocr`). It

1. exports both `.onnx` files as shipped (classification bundles of the orientation classifier; segmentation bundles
   of DBNet, its one-channel text probability read as background / text), with rapidocr's preprocessing
   (benchmarks/faithfulness/ocr_inputs.py);
2. checks each bundle's in-graph gradient against central finite differences of the shipped graph's part after the
   target layer, run in ONNX Runtime (graph_cut_gradients.py), at two DBNet layers and three classifier layers;
3. explains scikit-image's page.png and text.png with DBNet (the region: rapidocr's text pixels, probability > 0.3)
   and text-line crops of page.png, upright and turned 180 degrees, with the classifier, with every method each task
   runs, and scores the maps with fusioncam's metrics (Average Drop, Increase in Confidence, deletion and insertion
   AUC; for DBNet on the region probability);
4. writes benchmarks/results/faithfulness-third-party-<machine>.{json,md} and the pictures in docs/faithfulness/ocr/;
   `--part gradients|orientation|dbnet-page|dbnet-text` runs one part into faithfulness-third-party-<part>-<machine>
   (the committed results were made that way, the four parts side by side).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import fusioncam
from fusioncam.errors import FusionCamError
from fusioncam.metrics.evaluation import evaluate_maps
from fusioncam.metrics.segmentation import evaluate_segmentation_maps
from fusioncam.report.pictures import panel
from fusioncam.report.segmentation_pictures import segmentation_panel
from fusioncam.runtime.methods.registry import methods_for_task

from ..report import RESULTS, cpu_label, save_report
from .graph_cut_gradients import check_directions, check_gradient, check_kinks
from .ocr_inputs import LABELS, TEXT_THRESHOLD, classifier_input, detector_input, grey_photo, text_line_boxes
from .rapidocr_models import CLASSIFIER, DETECTOR, SHA256, VERSION, ModelsMissing, model_path
from .shipped_graphs import (CLASSIFIER_EXPLAINED, CLASSIFIER_LAYERS, DETECTOR_LAYERS, classifier_gradient,
                             detector_gradient, export_classifier, export_detector, scores_tensor, shipped_session)

PICTURES = Path(__file__).resolve().parents[2] / "docs" / "faithfulness" / "ocr"
CURVE_POINTS = 16  # deletion / insertion: the pixels change in 16 equal steps (DBNet's forwards are the cost)
TEXT_SCALE = 2  # text.png is enlarged 2x for DBNet: at its own 172 x 448 no pixel reaches 0.3


def _gradient_checks(shipped: Path, layer: str, found) -> dict:
    import onnx

    model = onnx.load(str(shipped))
    coordinates = check_gradient(model, found.image, layer, scores_tensor(model), found.activations, found.gradients,
                                 found.seed)
    directions = check_directions(model, found.image, layer, scores_tensor(model), found.activations,
                                  found.gradients, found.seed)
    kinks = check_kinks(model, found.image, layer, scores_tensor(model), found.activations, found.gradients,
                        found.seed)
    return {"forward_relative_error": found.forward_error, "coordinates": coordinates.record(),
            "directions": directions, "kinks": kinks.record()}


def _metrics(per_method: dict) -> dict:
    return {method: {metric: [float(v) for v in np.atleast_1d(values)] for metric, values in scores.items()}
            for method, scores in per_method.items()}


def _chunks(items, size: int) -> list[tuple]:
    items = tuple(items)
    return [items[i:i + size] for i in range(0, len(items), size)]


def _stacked(pictures: list[np.ndarray]) -> np.ndarray:
    """Panels one above the other, narrower ones padded on the right with white."""
    width = max(p.shape[1] for p in pictures)
    return np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=255)
                           for p in pictures], axis=0)


def _write_png(path: Path, picture: np.ndarray) -> None:
    """`picture` as a PNG with a 256-colour adaptive palette (a fifth of the RGB file's size), written atomically."""
    import io

    from PIL import Image

    from fusioncam.atomic import write_bytes_atomic

    buffer = io.BytesIO()
    Image.fromarray(picture).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        buffer, format="PNG", optimize=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buffer.getvalue())


# KPCA-CAM eigendecomposes a kernel over the map's positions: at DBNet's 96 x 192 target that is an 18432 x 18432
# matrix (2.7 GB, hours of numpy.linalg.eigh on 2 cores), so it is left out there and the results say so.
TOO_LARGE_FOR_DBNET = {"kpcacam": "a kernel over every position of the target map (page.png: 96 x 192, an "
                                   "18432 x 18432 numpy.linalg.eigh)"}


def detector_study(shipped: Path, work: Path, methods: tuple[str, ...], pictures: Path,
                   names: tuple[str, ...] = ("page", "text")) -> dict:
    """DBNet on page.png and text.png: the text region, every segmentation method's map, the metrics, a panel each."""
    import cv2

    methods = tuple(m for m in methods if m not in TOO_LARGE_FOR_DBNET)
    rows = {}
    for name in names:
        rgb = grey_photo(name)
        scale = TEXT_SCALE if name == "text" else 1
        if scale != 1:
            rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        resized, image = detector_input(rgb)
        (probability,) = shipped_session(shipped).run(None, {"x": image[None]})
        region = (probability[0, 0] > TEXT_THRESHOLD).astype(np.float32)
        bundle = work / f"dbnet-{name}.fcam"
        export_detector(shipped, bundle, resized.shape[:2], None)
        explainer = fusioncam.Explainer(bundle, device="cpu")
        started = time.perf_counter()
        explanation = explainer.explain(image[None], targets="text", methods=methods, regions=[region])
        explain_s = time.perf_counter() - started
        plane = region.size
        started = time.perf_counter()
        scores = evaluate_segmentation_maps(explainer, image[None], explanation, step=-(-plane // CURVE_POINTS))
        evaluate_s = time.perf_counter() - started
        picture = _stacked([segmentation_panel(resized, explanation, 0, methods=chunk, tile_height=160)
                            for chunk in _chunks(methods, 4)])
        _write_png(pictures / f"dbnet-{name}.png", picture)
        rows[name] = {
            "methods": list(methods), "left_out": dict(TOO_LARGE_FOR_DBNET),
            "input_size": list(resized.shape[:2]), "scale": scale, "text_pixels": int(region.sum()),
            "text_fraction": float(region.mean()), "region_probability": float(explanation.probabilities[0]),
            "target_layer": explainer.bundle.manifest.target_layer, "explain_s": explain_s, "evaluate_s": evaluate_s,
            "metrics": _metrics({m: {"average_drop": s.average_drop, "increase_in_confidence": s.increase,
                                     "deletion_auc": s.deletion_auc, "insertion_auc": s.insertion_auc}
                                 for m, s in scores.items()}),
            "picture": f"docs/faithfulness/ocr/dbnet-{name}.png",
        }
    return rows


def classifier_crops(detector: Path) -> tuple[list[tuple[int, int, int, int]], np.ndarray, list]:
    """page.png's text-line boxes from the shipped DBNet, the detector-sized page, and rapidocr's unclipped boxes."""
    resized, image = detector_input(grey_photo("page"))
    (probability,) = shipped_session(detector).run(None, {"x": image[None]})
    boxes = text_line_boxes(probability[0, 0], limit=8)
    return boxes, resized, text_line_boxes(probability[0, 0], limit=8, unclip=True)


def _orientation_probabilities(shipped: Path, page: np.ndarray, boxes) -> list[dict]:
    crops = [page[y0:y1, x0:x1] for x0, y0, x1, y1 in boxes]
    upright = np.stack([classifier_input(c)[1] for c in crops])
    turned = np.stack([classifier_input(np.ascontiguousarray(c[::-1, ::-1]))[1] for c in crops])
    (p_up,) = shipped_session(shipped).run(None, {"x": upright})
    (p_turned,) = shipped_session(shipped).run(None, {"x": turned})
    return [{"box": list(box), "upright": {LABELS[k]: float(p_up[i, k]) for k in range(2)},
             "turned_180": {LABELS[k]: float(p_turned[i, k]) for k in range(2)},
             "flips": bool(p_up[i].argmax() == 0 and p_turned[i].argmax() == 1)} for i, box in enumerate(boxes)]


def classifier_study(shipped: Path, work: Path, methods: tuple[str, ...], boxes, page: np.ndarray,
                     pictures: Path) -> dict:
    """The orientation classifier on text-line crops, upright and turned 180 degrees: every classification method's
    map of the predicted orientation, the metrics, one picture per crop (upright above, turned below)."""
    crops = [page[y0:y1, x0:x1] for x0, y0, x1, y1 in boxes]
    seen, images = zip(*[classifier_input(c) for c in crops]
                       + [classifier_input(np.ascontiguousarray(c[::-1, ::-1])) for c in crops])
    images = np.stack(images)
    bundle = work / "orientation.fcam"
    export_classifier(shipped, bundle, CLASSIFIER_LAYERS[CLASSIFIER_EXPLAINED])
    explainer = fusioncam.Explainer(bundle, device="cpu")
    runnable, refused = [], {}
    for method in methods:  # a method the bundle cannot run says why; the others run together below
        try:
            explainer.explain(images[:1], methods=(method,))
            runnable.append(method)
        except FusionCamError as error:
            refused[method] = str(error)
    names = [f"crop {i % len(crops)} {'upright' if i < len(crops) else 'turned 180'}" for i in range(len(images))]
    started = time.perf_counter()
    explanation = explainer.explain(images, methods=tuple(runnable), names=names)
    explain_s = time.perf_counter() - started
    started = time.perf_counter()
    evaluation = evaluate_maps(explainer, images, {m: explanation.maps[m] for m in runnable}, explanation.classes,
                               names=names, explanation=explanation)
    evaluate_s = time.perf_counter() - started
    n = len(crops)
    for i in range(n):
        tiles = []
        for j in (i, i + n):
            title = (f"{names[j]}: explained '{explanation.class_name(j)}' p={float(explanation.probabilities[j]):.3f}")
            tiles += [panel(seen[j], [(m, explanation.maps[m][j]) for m in chunk], title, tile_height=96)
                      for chunk in _chunks(runnable, 6)]
        _write_png(pictures / f"orientation-crop-{i}.png", _stacked(tiles))
    return {
        "target_layer": CLASSIFIER_LAYERS[CLASSIFIER_EXPLAINED], "methods": runnable, "refused": refused,
        "explain_s": explain_s, "evaluate_s": evaluate_s, "images": names,
        "explained_class": [LABELS[int(c)] for c in explanation.classes],
        "explained_probability": [float(p) for p in explanation.probabilities],
        "metrics": _metrics({m: s.per_image for m, s in evaluation.scores.items()}),
        "pictures": [f"docs/faithfulness/ocr/orientation-crop-{i}.png" for i in range(n)],
    }


def gradient_study(classifier: Path, detector: Path, work: Path, boxes, page: np.ndarray) -> dict:
    """Finite-difference checks: DBNet on page.png at its two layers, the classifier on the first crop at three."""
    checks = {}
    _, image = detector_input(grey_photo("page"))
    (probability,) = shipped_session(detector).run(None, {"x": image[None]})
    region = (probability[0, 0] > TEXT_THRESHOLD).astype(np.float32)
    for key, layer in DETECTOR_LAYERS.items():
        bundle = work / f"dbnet-check-{key}.fcam"
        export_detector(detector, bundle, image.shape[1:], layer)
        checks[f"dbnet {key} ({layer})"] = _gradient_checks(detector, layer,
                                                            detector_gradient(bundle, detector, image, region))
    x0, y0, x1, y1 = boxes[0]
    _, crop = classifier_input(page[y0:y1, x0:x1])
    for key, layer in CLASSIFIER_LAYERS.items():
        bundle = work / f"orientation-check-{key}.fcam"
        export_classifier(classifier, bundle, layer)
        checks[f"orientation {key} ({layer})"] = _gradient_checks(classifier, layer,
                                                                  classifier_gradient(bundle, classifier, crop))
    return checks


def automatic_targets(classifier: Path, detector: Path, work: Path) -> dict:
    """The target layers fusioncam picks by itself for the two shipped graphs."""
    picked = {}
    picked["orientation"] = fusioncam.export_onnx(classifier, work / "auto-orientation.fcam",
                                                  input_size=(48, 192), mean=(0.5,) * 3, std=(0.5,) * 3).describe()
    picked["dbnet"] = export_detector(detector, work / "auto-dbnet.fcam", (192, 384), None).describe()
    return picked


def markdown(report: dict) -> str:
    lines = [f"# Real third-party ONNX graphs (rapidocr-onnxruntime {VERSION}), explained as shipped", "",
             f"Machine: {report['machine_record']['cpu_model']} ({report['machine_record']['cpu_cores']} cores); "
             f"commit {report['machine_record']['commit']}; {report['machine_record']['recorded_at']}.", "",
             ]
    if "gradient_checks" in report:
        lines += _gradient_lines(report)
    if "orientation" in report:
        lines += _orientation_lines(report)
    for name, row in report.get("dbnet", {}).items():
        lines += [f"## DBNet on {name}.png ({row['input_size'][0]} x {row['input_size'][1]}, scale {row['scale']}): "
                  f"{row['text_pixels']} text pixels ({100 * row['text_fraction']:.1f}%), region probability "
                  f"{row['region_probability']:.3f}", "", f"Left out: {row['left_out']}.", "",
                  _metric_table(row["metrics"]), ""]
    return "\n".join(lines) + "\n"


def _gradient_lines(report: dict) -> list[str]:
    lines = ["## Gradient check: in-graph gradient vs central differences of the shipped graph after the target "
             "layer (ONNX Runtime, float32)", "",
             "Coordinates: the 16 largest-|g| ones plus 48 random; error = |g - fd| / max |fd|. Directions: the "
             "gradient's own and 4 random unit directions; error = |g.v - fd_v| / |g|.", "",
             "| graph, layer | forward rel. error | coord. max | coord. median | largest-|g| own max | "
             "gradient direction | random directions max |", "|---|---|---|---|---|---|---|"]
    for name, check in report["gradient_checks"].items():
        c, d = check["coordinates"], check["directions"]
        lines.append(f"| {name} | {check['forward_relative_error']:.1e} | {c['max_relative_error']:.1e} | "
                     f"{c['median_relative_error']:.1e} | {c['largest_own_relative_error']:.1e} | "
                     f"{d['gradient_direction_error']:.1e} | {d['random_direction_max_error']:.1e} |")
    lines += ["", "Kinks told apart from smooth points (graph_cut_gradients.check_kinks): one step e per layer from "
              "the measured float32 rounding error delta of S (the largest residual of a line fitted to S at 17 "
              "points 1e-5 max |A| apart along 16 random coordinates), e = 8 delta / (1e-3 max |fd|), so rounding "
              "is a quarter of the tolerance in a one-sided difference. A coordinate is a kink where a parabola "
              "fitted to S at 17 points of [x-e, x+e] leaves a residual above 1.5 delta; there g is compared with "
              "the nearer one-sided difference (S(x+e) - S(x))/e or (S(x) - S(x-e))/e, elsewhere with the central "
              "difference at e. Same coordinates and error definition as above.", "",
              "| graph, layer | delta | e / max abs(A) | smooth | smooth max | smooth median | kinks | "
              "kinks within 1e-3 of one side | kinks: max min-side error |", "|---|---|---|---|---|---|---|---|---|"]
    for name, check in report["gradient_checks"].items():
        k = check.get("kinks")
        if k:
            lines.append(f"| {name} | {k['rounding_error']:.1e} | {k['step_fraction']:.1e} | {k['smooth']} | "
                         f"{k['smooth_max_relative_error']:.1e} | {k['smooth_median_relative_error']:.1e} | "
                         f"{k['kinks']} | {k['kinks_matching_one_side']} | {k['kink_one_sided_max_error']:.1e} |")
    lines += ["", "Automatic targets:", ""] + [f"- {k}: {v}" for k, v in report["automatic_targets"].items()]
    return lines + [""]


def _orientation_lines(report: dict) -> list[str]:
    lines = ["## Orientation classifier on page.png's text lines (shipped graph's probabilities)", "",
              "| crop (x0, y0, x1, y1) | upright p('0') | turned 180 p('180') | flips |", "|---|---|---|---|"]
    for row in report["orientation"]["probabilities"]:
        lines.append(f"| {tuple(row['box'])} | {row['upright']['0']:.4f} | {row['turned_180']['180']:.4f} | "
                     f"{'yes' if row['flips'] else 'no'} |")
    lines += ["", "With rapidocr's own unclip margin (boxes grown by area x 1.6 / perimeter) the crops take in "
              "parts of the neighbouring lines:", "", "| crop | upright p('0') | turned 180 p('180') | flips |",
              "|---|---|---|---|"]
    for row in report["orientation"]["probabilities_unclipped"]:
        lines.append(f"| {tuple(row['box'])} | {row['upright']['0']:.4f} | {row['turned_180']['180']:.4f} | "
                     f"{'yes' if row['flips'] else 'no'} |")
    study = report["orientation"]["study"]
    lines += ["", f"Explained layer `{study['target_layer']}`; methods refused: "
              f"{', '.join(study['refused']) or 'none'}.", "", _metric_table(study["metrics"]), ""]
    return lines


def _metric_table(metrics: dict) -> str:
    """Mean over images of each metric per method."""
    names = ("average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc")
    rows = ["| method | Average Drop (%) ↓ | Increase in Confidence (%) ↑ | Deletion AUC ↓ | Insertion AUC ↑ |",
            "|---|---|---|---|---|"]
    for method, values in metrics.items():
        rows.append(f"| {method} | " + " | ".join(f"{np.mean(values[m]):.4f}" for m in names) + " |")
    return "\n".join(rows)


PARTS = ("all", "gradients", "orientation", "dbnet-page", "dbnet-text")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Grad-CAM and Fusion-CAM only (a smoke run)")
    parser.add_argument("--part", choices=PARTS, default="all",
                        help="one part of the study (its own results file), e.g. to run the parts side by side")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--pictures", type=Path, default=PICTURES)
    args = parser.parse_args(argv)
    try:
        classifier, detector = model_path(CLASSIFIER), model_path(DETECTOR)
    except ModelsMissing as missing:
        print(missing, file=sys.stderr)
        return 2
    quick = ("gradcam", "fusion")
    classification = quick if args.quick else methods_for_task("classification")
    segmentation = quick if args.quick else methods_for_task("segmentation")
    wanted = PARTS[1:] if args.part == "all" else (args.part,)
    report = {"graphs": {CLASSIFIER: {"sha256": SHA256[CLASSIFIER], "path": str(classifier)},
                         DETECTOR: {"sha256": SHA256[DETECTOR], "path": str(detector)}},
              "preprocessing": {"classifier": "rapidocr resize_norm_img: height 48, width ceil(48 w/h) <= 192, "
                                              "(x/255 - 0.5)/0.5, zero (grey) padding to 192",
                                "detector": "(x/255 - 0.5)/0.5, sides rounded to multiples of 32; region = shipped "
                                            f"probability > {TEXT_THRESHOLD}"},
              "quick": args.quick, "part": args.part}
    with tempfile.TemporaryDirectory(prefix="fusioncam-rapidocr-") as folder:
        work = Path(folder)
        boxes, page, unclipped = classifier_crops(detector)
        if "gradients" in wanted:
            report["automatic_targets"] = automatic_targets(classifier, detector, work)
            report["gradient_checks"] = gradient_study(classifier, detector, work, boxes, page)
        if "orientation" in wanted:
            report["orientation"] = {
                "probabilities": _orientation_probabilities(classifier, page, boxes),
                "probabilities_unclipped": _orientation_probabilities(classifier, page, unclipped),
                "study": classifier_study(classifier, work, classification, boxes, page, args.pictures)}
        names = tuple(part.split("-", 1)[1] for part in wanted if part.startswith("dbnet-"))
        if names:
            report["dbnet"] = detector_study(detector, work, segmentation, args.pictures, names)
    part = "" if args.part == "all" else f"-{args.part}"
    stem = f"faithfulness-third-party{part}{'-quick' if args.quick else ''}-{cpu_label()}"
    from fusioncam.benchmarking.machine import machine_record

    report["machine_record"] = machine_record()
    save_report(args.results, stem, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
