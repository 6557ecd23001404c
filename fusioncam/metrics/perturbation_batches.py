"""The unperturbed images through the explainer's scorer service: their classes and class probabilities (Y)."""

from __future__ import annotations

from ..kernels import Array
from ..runtime.betas import class_probabilities
from ..runtime.scorer import Scorer


def image_predictions(scorer: Scorer, images: Array, targets) -> tuple[Array, Array]:
    """(classes int64 [N], probabilities float64 [N]) on the device for the unperturbed images: the target class,
    or the arg-max of the image's logits where the target is -1. Call inside scorer.in_use()."""
    xp = scorer.xp
    classes = scorer.asarray(targets).astype(xp.int64)
    probabilities = xp.empty((classes.shape[0],), dtype=xp.float64)

    def write(start: int, stop: int, buffer) -> None:
        buffer[: stop - start] = images[start:stop]

    def read(start: int, stop: int, logits) -> None:
        chosen = xp.where(classes[start:stop] < 0, logits.argmax(axis=1), classes[start:stop])
        classes[start:stop] = chosen
        probabilities[start:stop] = class_probabilities(xp, logits, chosen)

    scorer.run(int(classes.shape[0]), write, read)
    return classes, probabilities


def target_classes(scorer: Scorer, images: Array, targets) -> Array:
    """int64 [N] device classes; runs the unperturbed images only when some target asks for the arg-max (-1)."""
    if (targets >= 0).all():
        return scorer.asarray(targets).astype(scorer.xp.int64)
    return image_predictions(scorer, images, targets)[0]
