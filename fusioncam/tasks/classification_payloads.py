"""A classifier's encodings for serve, evaluate and explain-dataset: top-k classes with probabilities as the
prediction, the explained class and its softmax probability as the explained target, no region."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError

REGION_REFUSAL = ("a region applies to segmentation bundles only; this model explains image classes (leave out "
                  "'region')")


class ClassificationPayloads:
    """Encodings of an image classifier's predictions and explained classes."""

    v2_prediction_outputs = ("probabilities", "classes", "class_names")
    v2_explanation_outputs = ("explained_class", "explained_probability")
    score_name = "class probability"

    # --- serving
    def v1_regions(self, shared: Any, instances: list, size: tuple[int, int], max_pixels: int) -> None:
        """None: a classifier has no region; one given is refused (a BadRequest)."""
        from ..serve.request_errors import BadRequest

        if shared is not None or any(isinstance(i, dict) and "region" in i for i in instances):
            raise BadRequest(REGION_REFUSAL)
        return None

    def v2_regions(self, tensor, parameter: Any, count: int, size: tuple[int, int]) -> None:
        from ..serve.request_errors import BadRequest

        if tensor is not None or parameter is not None:
            raise BadRequest(REGION_REFUSAL)
        return None

    def v2_input_types(self, manifest) -> list[dict]:
        return []

    def v2_output_types(self, manifest) -> list[dict]:
        return [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "classes", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "class_names", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "explained_class", "datatype": "INT64", "shape": [-1]},
            {"name": "explained_probability", "datatype": "FP32", "shape": [-1]},
        ]

    def predict(self, explainer, images: np.ndarray) -> np.ndarray:
        """float32 [N, classes]: the logits of preprocessed images (no explanation)."""
        return np.asarray(explainer.predict(images).logits, dtype=np.float32)  # Explainer.predict: Task.predict

    def explained_facts(self, explanation) -> dict[str, np.ndarray]:
        return {}

    def v1_predictions(self, logits: np.ndarray, top_k: int, manifest) -> list[dict]:
        """Per image: the top-k classes, their names and softmax probabilities, most probable first."""
        from ..serve.predictions import class_label, top_k as top_classes

        classes, probabilities = top_classes(logits, top_k)
        names = manifest.class_names
        return [{"classes": [int(c) for c in classes[i]], "class_names": [class_label(names, int(c)) for c in classes[i]],
                 "probabilities": [float(p) for p in probabilities[i]]} for i in range(len(logits))]

    def v1_target(self, classes, probabilities, facts: dict, i: int, manifest) -> dict:
        from ..serve.predictions import class_label

        explained = int(classes[i])
        return {"class": explained, "class_name": class_label(manifest.class_names, explained),
                "probability": float(probabilities[i])}

    def v2_tensors(self, logits, classes, probabilities, facts: dict, top_k: int, manifest,
                   outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The requested prediction and explained-class tensors (the top k only when one of them is asked for)."""
        from ..serve.predictions import class_label, top_k as top_classes

        tensors: dict[str, np.ndarray] = {}
        if any(name in self.v2_prediction_outputs for name in outputs):
            top, top_probabilities = top_classes(logits, top_k)
            tensors.update(probabilities=top_probabilities.astype(np.float32), classes=top)
            if "class_names" in outputs:
                tensors["class_names"] = np.array([[class_label(manifest.class_names, int(c)).encode("utf-8")
                                                    for c in row] for row in top], dtype=np.object_)
        if classes is not None:
            tensors["explained_class"] = classes.astype(np.int64)
            tensors["explained_probability"] = probabilities.astype(np.float32)
        return tensors

    # --- explain-dataset
    def dataset_fields(self) -> list[tuple[str, Any]]:
        return []

    def dataset_row(self, explanation, j: int, region: str | None) -> dict[str, Any]:
        return {}

    def dataset_regions(self, values: list, size: tuple[int, int], sources: list[str]) -> tuple[None, dict]:
        """No regions; a row that names one becomes an error row saying why."""
        errors = {i: f"{sources[i]}: {REGION_REFUSAL}" for i, value in enumerate(values) if value is not None}
        return None, errors

    # --- evaluate
    def evaluate(self, explainer, image: np.ndarray, methods: tuple[str, ...], name: str, step: int, region,
                 on_batch=None, before_method=None, road_percentiles=None):
        """(explanation, Evaluation) of one preprocessed image [1, 3, H, W] for its top class."""
        if region is not None:
            raise InputError(REGION_REFUSAL.replace("'region'", "--region"))
        explanation = explainer.explain(image, methods=tuple(methods), names=[name], on_batch=on_batch)
        maps = {method: explanation.maps[method] for method in methods}
        return explanation, self.evaluate_maps(explainer, image, maps, explanation, step, [name], before_method,
                                               road_percentiles)

    def evaluate_maps(self, explainer, images: np.ndarray, maps: dict, explanation, step: int, names: list[str],
                      before_method=None, road_percentiles=None):
        """The Evaluation of each method's maps of these images for the explanation's classes (metrics/)."""
        from ..metrics.evaluation import evaluate_maps

        return evaluate_maps(explainer, images, maps, explanation.classes, step, names, explanation=explanation,
                             before_method=before_method, road_percentiles=road_percentiles)

    def evaluation_facts(self, explanation) -> dict[str, Any]:
        return {}

    def evaluation_subject(self, region) -> str:
        """What `fusioncam evaluate` explains and scores, for its report; --region is refused (an InputError)."""
        if region is not None:
            raise InputError(REGION_REFUSAL.replace("'region'", "--region"))
        return "its top class"
