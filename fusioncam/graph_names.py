"""The tensor names of a bundle's graphs: the contract between export, which writes them, and the runtime, which
feeds and reads them. Spelled here once; export and runtime both import them."""

from __future__ import annotations

INPUT = "input"  # float32 [N, 3, H, W] preprocessed images: the explain graph's and the scorer's input
TARGET = "target"  # int64 [N]: the class to explain per image, -1 for the arg-max (explain graph)
LOGITS = "logits"  # float32 [N, classes]: both graphs' class scores
ACTIVATIONS = "activations"  # float32 [N, K, h, w]: the target layer's output A (explain graph)
GRADIENTS = "gradients"  # float32 [N, K, h, w]: dy_c / dA (explain graph)
TARGET_USED = "target_used"  # int64 [N]: the class explained per image, the arg-max resolved (explain graph)


def layer_activations(index: int) -> str:
    """The explain graph's output of target layer `index`'s activations: ACTIVATIONS for the first (every bundle),
    "activations/1", "activations/2", ... for the further layers of a several-layer bundle (manifest extra_layers)."""
    return ACTIVATIONS if index == 0 else f"{ACTIVATIONS}/{index}"


def layer_gradients(index: int) -> str:
    """The explain graph's output of target layer `index`'s gradients (GRADIENTS for the first; see
    layer_activations)."""
    return GRADIENTS if index == 0 else f"{GRADIENTS}/{index}"


EXPLAIN_INPUTS = (INPUT, TARGET)
EXPLAIN_OUTPUTS = (LOGITS, ACTIVATIONS, GRADIENTS, TARGET_USED)
SCORER_INPUTS = (INPUT,)
SCORER_OUTPUTS = (LOGITS,)
HEAD_INPUTS = (ACTIVATIONS,)  # the head graph (export/head_graph.py): the target layer's activations [N, K, h, w]
HEAD_OUTPUTS = (LOGITS,)  # ... to the class scores [N, classes]

# Segmentation bundles (docs/segmentation.md): a class and a region per image; the scorer returns the region's score.
REGION = "region"  # explain input: float [N, H, W] at the input resolution; a row with a negative value = predicted
PREDICTED_REGION = -1.0  # fill value of a region row that asks for "where the model predicts the class"
REGION_WEIGHTS = "region_weights"  # explain output and scorer input: float [N, H', W'] (the w of S and P)
SCORE = "score"  # scorer output: float [N], the region probability P

SEGMENTATION_EXPLAIN_INPUTS = (*EXPLAIN_INPUTS, REGION)
SEGMENTATION_EXPLAIN_OUTPUTS = (*EXPLAIN_OUTPUTS, REGION_WEIGHTS)
SEGMENTATION_SCORER_INPUTS = (INPUT, TARGET, REGION_WEIGHTS)
SEGMENTATION_SCORER_OUTPUTS = (SCORE,)

# Detection bundles (fusioncam/tasks/detection.py): one explained instance per row (an anchor and a class of an image).
ANCHOR = "anchor"  # explain input: int64 [N], the explained instance's anchor (prediction index)
REFERENCE_BOX = "reference_box"  # explain and scorer input: float [N, 4] x0, y0, x1, y1 in input pixels
INSTANCE_IMAGE = "instance_image"  # explain input: int64 [N], the image each row explains (passed through)
ANCHOR_USED = "anchor_used"  # explain output: int64 [N]
INSTANCE_BOX = "instance_box"  # explain output: float [N, 4], the anchor's box on the unmasked image
REFERENCE_BOX_USED = "reference_box_used"  # explain output: float [N, 4]
INSTANCE_IMAGE_USED = "instance_image_used"  # explain output: int64 [N]
DETECTION_BOXES = "detection_boxes"  # explain output: float [N, A, 4], every anchor's box (x0, y0, x1, y1)
DETECTION_SCORES = "detection_scores"  # explain output: float [N, A, C], every anchor's class scores (activated)

DETECTION_EXPLAIN_INPUTS = (INPUT, ANCHOR, TARGET, REFERENCE_BOX, INSTANCE_IMAGE)
DETECTION_EXPLAIN_OUTPUTS = (LOGITS, ACTIVATIONS, GRADIENTS, TARGET_USED, ANCHOR_USED, INSTANCE_BOX,
                             REFERENCE_BOX_USED, INSTANCE_IMAGE_USED, DETECTION_BOXES, DETECTION_SCORES)
DETECTION_SCORER_INPUTS = (INPUT, TARGET, REFERENCE_BOX)
DETECTION_SCORER_OUTPUTS = (SCORE,)
