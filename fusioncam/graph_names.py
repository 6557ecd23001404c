"""The tensor names of a bundle's graphs: the contract between export, which writes them, and the runtime, which
feeds and reads them. Spelled here once; export and runtime both import them."""

from __future__ import annotations

INPUT = "input"  # float32 [N, 3, H, W] preprocessed images: the explain graph's and the scorer's input
TARGET = "target"  # int64 [N]: the class to explain per image, -1 for the arg-max (explain graph)
LOGITS = "logits"  # float32 [N, classes]: both graphs' class scores
ACTIVATIONS = "activations"  # float32 [N, K, h, w]: the target layer's output A (explain graph)
GRADIENTS = "gradients"  # float32 [N, K, h, w]: dy_c / dA (explain graph)
TARGET_USED = "target_used"  # int64 [N]: the class explained per image, the arg-max resolved (explain graph)

EXPLAIN_INPUTS = (INPUT, TARGET)
EXPLAIN_OUTPUTS = (LOGITS, ACTIVATIONS, GRADIENTS, TARGET_USED)
SCORER_INPUTS = (INPUT,)
SCORER_OUTPUTS = (LOGITS,)

# Segmentation bundles (docs/segmentation.md): a class and a region per image; the scorer returns the region's score.
REGION = "region"  # explain input: float [N, H, W] at the input resolution; a row with a negative value = predicted
PREDICTED_REGION = -1.0  # fill value of a region row that asks for "where the model predicts the class"
REGION_WEIGHTS = "region_weights"  # explain output and scorer input: float [N, H', W'] (the w of S and P)
SCORE = "score"  # scorer output: float [N], the region probability P

SEGMENTATION_EXPLAIN_INPUTS = (*EXPLAIN_INPUTS, REGION)
SEGMENTATION_EXPLAIN_OUTPUTS = (*EXPLAIN_OUTPUTS, REGION_WEIGHTS)
SEGMENTATION_SCORER_INPUTS = (INPUT, TARGET, REGION_WEIGHTS)
SEGMENTATION_SCORER_OUTPUTS = (SCORE,)
