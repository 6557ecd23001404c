"""Feeding perturbed images through the explainer's scorer in its batches (backend.batch_ranges), written in place by kernels."""

from __future__ import annotations

from collections.abc import Callable

from ..runtime.betas import class_probabilities

RowWriter = Callable[[object, object], None]  # (rows: device int64 [b], buffer): write those rows into buffer[:b]


def row_probabilities(backend, total: int, classes_of_row, write_rows: RowWriter):
    """float64 [total] on the device: softmax of the scorer's logits at each row's class, rows written by write_rows."""
    xp = backend.xp
    out = xp.empty((total,), dtype=xp.float64)
    buffer = backend.input_buffer()
    for start, stop in backend.batch_ranges(total):
        write_rows(xp.arange(start, stop, dtype=xp.int64), buffer)
        out[start:stop] = class_probabilities(xp, backend.score_rows(stop - start), classes_of_row[start:stop])
    return out


def image_predictions(backend, images, targets) -> tuple[object, object]:
    """(classes int64 [N], probabilities float64 [N]) on the device for the unperturbed images: the target class,
    or the arg-max of the image's logits where the target is -1."""
    xp = backend.xp
    classes = backend.asarray(targets).astype(xp.int64)
    probabilities = xp.empty((classes.shape[0],), dtype=xp.float64)
    buffer = backend.input_buffer()
    for start, stop in backend.batch_ranges(int(classes.shape[0])):
        buffer[: stop - start] = images[start:stop]
        logits = backend.score_rows(stop - start)
        chosen = xp.where(classes[start:stop] < 0, logits.argmax(axis=1), classes[start:stop])
        classes[start:stop] = chosen
        probabilities[start:stop] = class_probabilities(xp, logits, chosen)
    return classes, probabilities


def target_classes(backend, images, targets):
    """int64 [N] device classes; runs the unperturbed images only when some target asks for the arg-max (-1)."""
    if (targets >= 0).all():
        return backend.asarray(targets).astype(backend.xp.int64)
    return image_predictions(backend, images, targets)[0]
