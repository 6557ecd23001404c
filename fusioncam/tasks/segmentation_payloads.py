"""A segmentation model's encodings for serve, evaluate and explain-dataset (docs/segmentation.md).

The prediction is the per-pixel class map argmax_c y_c [H', W'] with the classes ranked by how many output pixels
they take; the explained target is a class over a region, reported with its region probability P(x) and the
region's area (the sum of its weights w at the output resolution). Requests and dataset rows carry a region per
image: "predicted" (the default), "all", a box or a mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import FusionCamError


def class_ranking(predicted: np.ndarray, num_classes: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(classes int64 [N, k], pixel fractions float64 [N, k]): each image's k classes predicted on the most output
    pixels, most first (ties: the lower class index), with the fraction of the output's pixels each takes."""
    n = predicted.shape[0]
    counts = np.stack([np.bincount(predicted[i].ravel(), minlength=num_classes) for i in range(n)]) if n else \
        np.zeros((0, num_classes), np.int64)
    order = np.argsort(-counts, axis=1, kind="stable")[:, :k]
    plane = max(1, int(np.prod(predicted.shape[1:])))
    return order.astype(np.int64), np.take_along_axis(counts, order, axis=1) / plane


class SegmentationPayloads:
    """Encodings of a segmentation model's per-pixel predictions and explained class-over-region targets."""

    v2_prediction_outputs = ("segmentation", "classes", "class_names", "pixel_fractions")
    v2_explanation_outputs = ("explained_class", "explained_probability", "region_weights")
    score_name = "region probability"

    # --- serving
    def v1_regions(self, shared: Any, instances: list, size: tuple[int, int], max_pixels: int) -> list:
        from ..serve.regions import v1_regions

        return v1_regions(shared, instances, size, max_pixels)

    def v2_regions(self, tensor, parameter: Any, count: int, size: tuple[int, int]) -> list:
        from ..serve.regions import v2_regions

        return v2_regions(tensor, parameter, count, size)

    def v2_input_types(self, manifest) -> list[dict]:
        """The optional `region` input, listed once (Open Inference Protocol metadata has one entry per tensor
        name) in its mask form; UINT8 masks and FP32 or INT32 boxes [N, 4] under the same name are accepted too
        (serve/regions.py, docs/segmentation.md)."""
        from ..serve.regions import REGION_INPUT

        height, width = manifest.input_size
        return [{"name": REGION_INPUT, "datatype": "BOOL", "shape": [-1, height, width], "optional": True}]

    def v2_output_types(self, manifest) -> list[dict]:
        out_h, out_w = manifest.output_size
        return [
            {"name": "segmentation", "datatype": "INT64", "shape": [-1, out_h, out_w]},
            {"name": "classes", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "class_names", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "pixel_fractions", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "explained_class", "datatype": "INT64", "shape": [-1]},
            {"name": "explained_probability", "datatype": "FP32", "shape": [-1]},
            {"name": "region_weights", "datatype": "FP32", "shape": [-1, out_h, out_w]},
        ]

    def predict(self, explainer, images: np.ndarray) -> np.ndarray:
        """float32 [N, C, H', W']: the per-pixel class scores of preprocessed images (no explanation)."""
        return np.asarray(explainer.predict(images).logits, dtype=np.float32)  # Explainer.predict: Task.predict

    def explained_facts(self, explanation) -> dict[str, np.ndarray]:
        return {"region_weights": explanation.region_weights}

    def v1_predictions(self, logits: np.ndarray, top_k: int, manifest) -> list[dict]:
        """Per image: the class of every output pixel [H', W'], and the top-k classes by pixel count."""
        from ..serve.predictions import class_label

        predicted = np.argmax(logits, axis=1)
        classes, fractions = class_ranking(predicted, logits.shape[1], top_k)
        return [{"segmentation": np.ascontiguousarray(predicted[i]), "classes": [int(c) for c in classes[i]],
                 "class_names": [class_label(manifest.class_names, int(c)) for c in classes[i]],
                 "pixel_fractions": [float(f) for f in fractions[i]]} for i in range(len(logits))]

    def v1_target(self, classes, probabilities, facts: dict, i: int, manifest) -> dict:
        from ..serve.predictions import class_label

        explained = int(classes[i])
        return {"class": explained, "class_name": class_label(manifest.class_names, explained),
                "probability": float(probabilities[i]), "region_area": float(facts["region_weights"][i].sum()),
                "region_weights": np.ascontiguousarray(facts["region_weights"][i], dtype=np.float32)}

    def v2_tensors(self, logits, classes, probabilities, facts: dict, top_k: int, manifest,
                   outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        from ..serve.predictions import class_label

        tensors: dict[str, np.ndarray] = {}
        if any(name in self.v2_prediction_outputs for name in outputs):
            predicted = np.argmax(logits, axis=1).astype(np.int64)
            ranked, fractions = class_ranking(predicted, logits.shape[1], top_k)
            tensors.update(segmentation=predicted, classes=ranked, pixel_fractions=fractions.astype(np.float32))
            if "class_names" in outputs:
                tensors["class_names"] = np.array([[class_label(manifest.class_names, int(c)).encode("utf-8")
                                                    for c in row] for row in ranked], dtype=np.object_)
        if classes is not None:
            tensors["explained_class"] = classes.astype(np.int64)
            tensors["explained_probability"] = probabilities.astype(np.float32)
            tensors["region_weights"] = np.ascontiguousarray(facts["region_weights"], dtype=np.float32)
        return tensors

    # --- explain-dataset
    def dataset_fields(self) -> list[tuple[str, Any]]:
        import pyarrow as pa

        from ..dataset.regions import REGION_COLUMN

        return [(REGION_COLUMN, pa.string()), ("region_area", pa.float64())]

    def dataset_row(self, explanation, j: int, region: str | None) -> dict[str, Any]:
        """The row's region as given ("predicted" by default) and its area at the output resolution."""
        from ..dataset.regions import REGION_COLUMN

        return {REGION_COLUMN: region or "predicted", "region_area": float(explanation.region_weights[j].sum())}

    def dataset_regions(self, values: list, size: tuple[int, int], sources: list[str]) -> tuple[list, dict]:
        """Each row's region from its `region` value (None: predicted), and {row: error} for the unreadable ones."""
        from ..dataset.regions import row_region

        regions, errors = [], {}
        for i, value in enumerate(values):
            try:
                regions.append(row_region(value, size, sources[i]))
            except FusionCamError as exc:
                regions.append(None)
                errors[i] = str(exc)
        return regions, errors

    # --- evaluate
    def evaluate(self, explainer, image: np.ndarray, methods: tuple[str, ...], name: str, step: int, region,
                 on_batch=None, before_method=None, road_percentiles=None):
        """(explanation, Evaluation) of one preprocessed image [1, 3, H, W] for the class predicted on most pixels
        over `region`, each method's maps scored by the region probability P (runtime/segmentation_metrics.py)."""
        from ..metrics.road import refuse_road

        refuse_road("segmentation", road_percentiles)
        explanation = explainer.explain(image, methods=tuple(methods), names=[name], on_batch=on_batch, regions=region)
        maps = {method: explanation.maps[method] for method in methods}
        return explanation, self.evaluate_maps(explainer, image, maps, explanation, step, [name], before_method)

    def evaluate_maps(self, explainer, images: np.ndarray, maps: dict, explanation, step: int, names: list[str],
                      before_method=None, road_percentiles=None):
        """The Evaluation (metrics/evaluation.py's record) of each method's maps for the explanation's classes and
        regions, every perturbed image scored by P (metrics/segmentation.py)."""
        from ..metrics.evaluation import Evaluation, MethodScores
        from ..metrics.road import refuse_road
        from ..metrics.segmentation import evaluate_segmentation_maps

        refuse_road("segmentation", road_percentiles)

        scores = {}
        for method, method_maps in maps.items():
            if before_method is not None:
                before_method()
            got = evaluate_segmentation_maps(explainer, images, explanation, {method: method_maps}, step)[method]
            scores[method] = MethodScores(
                per_image={"average_drop": got.average_drop, "increase_in_confidence": got.increase,
                           "deletion_auc": got.deletion_auc, "insertion_auc": got.insertion_auc},
                deletion=(got.fractions, got.deletion_curve), insertion=(got.fractions, got.insertion_curve))
        return Evaluation(scores, list(names), np.asarray(explanation.classes, np.int64), int(step))

    def evaluation_subject(self, region) -> str:
        """What `fusioncam evaluate` explains and scores, for its report."""
        where = "where the model predicts it" if region in (None, "predicted") else \
            ("over the whole image" if region == "all" else f"over the box (x0, y0, x1, y1) = {tuple(region)}")
        return (f"the class predicted on most output pixels, {where}, each map scored by the region probability P "
                f"(the mean per-pixel probability of the class over the region; docs/segmentation.md)")

    def evaluation_facts(self, explanation) -> dict[str, Any]:
        return {"region_probability": float(explanation.probabilities[0]),
                "region_area": float(explanation.region_weights[0].sum()),
                "output_size": list(explanation.region_weights.shape[1:])}
