"""Turn a prepared segmenter and a target layer into a verified segmentation bundle on disk (task "segmentation")."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..bundle import Bundle
from ..errors import ModelLoadError
from ..graph_names import INPUT, PREDICTED_REGION, REGION, REGION_WEIGHTS, SCORE, TARGET
from ..images import IMAGENET_MEAN, IMAGENET_STD
from .bundle_builder import (FP16_SCORER_TOLERANCE, ExportResult, _cpu_session, bundle_manifest, run_explain_once,
                             write_checked_graphs)
from .layers import Layer
from .segmentation_graph import Segmenter, build_segmentation_explain, build_segmentation_scorer

SEGMENTATION = "segmentation"


def _scorer_feed(size: tuple[int, int], output_size: tuple[int, int], seed: int, batch: int = 2) -> dict:
    """A random scorer input: images, classes 0 and 1 (mod C is the caller's), random region weights in [0, 1]."""
    rng = np.random.default_rng(seed)
    return {INPUT: rng.standard_normal((batch, 3, *size)).astype(np.float32),
            REGION_WEIGHTS: rng.random((batch, *output_size)).astype(np.float32)}


def _check_scorer(scorer: Path, segmenter: Segmenter, origin: str):
    """Run the scorer at N=2 and N=1: a graph that hard-codes batch 1 or mixes images is refused. Returns the session."""
    session = _cpu_session(scorer, origin, "scorer")
    feed = _scorer_feed(segmenter.input_size, segmenter.output_size, 0)
    feed[TARGET] = np.arange(2, dtype=np.int64) % segmenter.num_classes
    try:
        together = session.run([SCORE], feed)[0]
        alone = np.concatenate([session.run([SCORE], {k: v[i : i + 1] for k, v in feed.items()})[0] for i in range(2)])
    except Exception as exc:
        raise ModelLoadError(
            f"{origin}: the segmentation model does not run with a batch of 2 images ({str(exc).splitlines()[0]}); it "
            f"probably hard-codes batch size 1. Re-export it with a dynamic batch axis."
        ) from None
    if together.shape != alone.shape or float(np.abs(together - alone).max()) > 1e-4:
        raise ModelLoadError(
            f"{origin}: region probabilities of a batch of 2 differ from those of each image alone; the model mixes "
            f"images of a batch (training-mode BatchNorm?). Export it in inference mode with a dynamic batch."
        )
    return session


def _check_fp16_scorer(scorer_session, scorer_fp16: Path, segmenter: Segmenter, origin: str) -> None:
    """The float16 scorer must load, run and give region probabilities within the fp16 tolerance of float32's."""
    feed = _scorer_feed(segmenter.input_size, segmenter.output_size, 2)
    feed[TARGET] = np.zeros(2, dtype=np.int64)
    expected = scorer_session.run([SCORE], feed)[0]
    session = _cpu_session(scorer_fp16, origin, "float16 scorer")
    half = {INPUT: feed[INPUT].astype(np.float16), REGION_WEIGHTS: feed[REGION_WEIGHTS].astype(np.float16),
            TARGET: feed[TARGET]}
    try:
        got = session.run([SCORE], half)[0].astype(np.float32)
    except Exception as exc:
        raise ModelLoadError(f"{origin}: the float16 scorer fails in ONNX Runtime: {str(exc).splitlines()[0]}") from None
    error = float(np.abs(got - expected).max()) if np.isfinite(got).all() else float("inf")
    if error > FP16_SCORER_TOLERANCE:
        raise ModelLoadError(
            f"{origin}: the float16 scorer's region probabilities differ from float32 by up to {error:.3g} (limit "
            f"{FP16_SCORER_TOLERANCE}); the model is not float16-safe (overflow?). Export without fp16_scorer."
        )


def _check_explain(explain: Path, segmenter: Segmenter, origin: str) -> None:
    """Run the explain graph once (largest class over the predicted region, and class 0 over the whole image)."""
    rng = np.random.default_rng(1)
    region = np.ones((2, *segmenter.input_size), dtype=np.float32)
    region[0] = PREDICTED_REGION
    feed = {INPUT: rng.standard_normal((2, 3, *segmenter.input_size)).astype(np.float32),
            TARGET: np.array([-1, 0], dtype=np.int64), REGION: region}
    run_explain_once(explain, feed, origin)


def write_segmentation_bundle(
    segmenter: Segmenter,
    layer: Layer,
    out: str | os.PathLike,
    *,
    target_label: str,
    source: str,
    source_sha256: str,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    class_names: list[str] | None = None,
    picked_automatically: bool = False,
    fp16_scorer: bool = False,
) -> ExportResult:
    """Build the segmentation explain graph and scorer (and with `fp16_scorer` a float16 scorer), check them, and
    write the bundle atomically."""
    manifest = bundle_manifest(segmenter, layer, target_label=target_label, source=source,
                               source_sha256=source_sha256, mean=mean, std=std, class_names=class_names,
                               task=SEGMENTATION, output_size=tuple(segmenter.output_size))
    write_checked_graphs(out, manifest, segmenter, layer, fp16_scorer, source, segmenter,
                         builders=(build_segmentation_scorer, build_segmentation_explain),
                         checks=(_check_scorer, _check_fp16_scorer, _check_explain))
    return ExportResult(bundle=Bundle(path=Path(out), manifest=manifest), layer=layer,
                        picked_automatically=picked_automatically,
                        notes=(segmenter.output_note,) if segmenter.output_note else ())


__all__ = ["SEGMENTATION", "write_segmentation_bundle"]
