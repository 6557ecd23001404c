"""FullGrad (Srinivas and Fleuret, NeurIPS 2019): input-gradient and every layer's bias-gradient terms, summed.

The whole map comes from the bundle's FullGrad graph (export/fullgrad_graph.py, built on first use by
runtime/derived_graphs.py): one forward and one backward to the image for the N images and their explained classes,
with pytorch-grad-cam 1.5.7's arithmetic (each term's channels scaled to [0, 1], summed, resized bilinearly to the
image, the terms summed and scaled to [0, 1]). It does not read the target layer: FullGrad uses every bias layer.
The same with compat="pytorch-grad-cam".
"""

from __future__ import annotations

from ...errors import InputError
from .engine import Engine, MethodOutput


def fullgrad(engine: Engine) -> MethodOutput:
    """FullGrad's map [N, H, W] in [0, 1] (device) for the explained classes."""
    if engine.derived is None or engine.logits is None or engine.logits.ndim != 2:  # class scores [N, C]
        raise InputError("fullgrad runs on a classifier bundle's FullGrad graph (the whole network's biases); this "
                         "bundle's task has none (use the other methods for segmentation and detection bundles)")
    scorer = engine.scorer
    images = scorer.to_host(engine.images)
    classes = scorer.to_host(engine.explained_classes).astype("int64")
    result = engine.derived.fullgrad(images, classes)
    return MethodOutput(scorer.asarray(result))
