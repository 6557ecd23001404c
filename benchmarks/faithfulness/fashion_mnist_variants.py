"""Fusion-CAM's faster variants against exact fp32 on Fashion-MNIST test images: fast mode (the Score-CAM sweep
limited to the k channels with the largest gradient weights, `Explainer(max_channels=k)`) and the float16 scorer
(`Explainer(precision="fp16")`).

Each variant explains the same images for the same classes (the exact explainer's predicted classes). Every map,
the exact ones included, is then scored by the same exact fp32 explainer (`evaluate_maps`, the study's step), so a
metric difference comes from the maps alone. Per image: the Pearson correlation of the variant's map with the exact
map, and each metric's variant-minus-exact difference (paired bootstrap interval).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

FP16 = "fp16"
VARIANT_METRICS = ("average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc")
HIGHER_IS_BETTER = {"average_drop": False, "increase_in_confidence": True, "deletion_auc": False,
                    "insertion_auc": True}


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each pair of maps [N, H, W] (NaN where either map is constant)."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    norm = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (a * b).sum(axis=1) / norm, np.nan)


def decoded_images(table_path: Path, count: int, manifest) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The first `count` rows of the study's test table: ids, model inputs [N,3,H,W] (decoded as every fusioncam
    reader decodes them) and labels."""
    import pyarrow.parquet as pq

    from fusioncam.images import decode_model_input

    table = pq.read_table(table_path).slice(0, count)
    ids = table.column("id").to_pylist()
    images = np.stack([decode_model_input(data, name, manifest.input_size, manifest.mean, manifest.std)
                       for data, name in zip(table.column("image").to_pylist(), ids)])
    return ids, images, table.column("label").to_numpy().astype(np.int64)


def fast_name(channels: int) -> str:
    return f"fast{channels}"


def compare_variants(bundle: Path, images: np.ndarray, fast_channels: tuple[int, ...], step: int, chunk: int = 100,
                     scorer_batch: int = 256) -> dict[str, np.ndarray]:
    """Per image: the exact classes, each variant's map Pearson r with the exact map, and every metric of the exact
    and variant maps (scored by the exact explainer). Keys: 'classes', '<variant>_pearson', '<variant>_<metric>'
    with variant exact, fast<k> (each k of fast_channels) or fp16."""
    from fusioncam import Explainer
    from fusioncam.metrics.evaluation import evaluate_maps

    exact = Explainer(bundle, device="cpu", batch_size=scorer_batch)
    variants = {fast_name(k): Explainer(bundle, device="cpu", batch_size=scorer_batch, max_channels=k)
                for k in fast_channels}
    variants[FP16] = Explainer(bundle, device="cpu", batch_size=scorer_batch, precision="fp16")
    columns: dict[str, list] = {}
    for first in range(0, len(images), chunk):
        batch = images[first:first + chunk]
        reference = exact.explain(batch, methods=("fusion",))
        maps = {"exact": reference.maps["fusion"]}
        for name, explainer in variants.items():
            maps[name] = explainer.explain(batch, targets=reference.classes, methods=("fusion",)).maps["fusion"]
            columns.setdefault(f"{name}_pearson", []).append(pearson_rows(maps[name], maps["exact"]))
        scored = evaluate_maps(exact, batch, maps, targets=reference.classes, step=step, explanation=reference)
        for name, scores in scored.scores.items():
            for metric in VARIANT_METRICS:
                columns.setdefault(f"{name}_{metric}", []).append(scores.per_image[metric])
        columns.setdefault("classes", []).append(np.asarray(reference.classes, dtype=np.int64))
    return {key: np.concatenate(parts) for key, parts in columns.items()}


def variant_report(values: dict[str, np.ndarray], resamples: int) -> dict:
    """Pearson r (mean, min, share above 0.99) and each metric's variant-minus-exact paired difference."""
    from fusioncam.report.bootstrap import bootstrap_mean, paired_difference

    report = {"images": int(len(values["classes"])), "variants": {}}
    names = [key[: -len("_pearson")] for key in values if key.endswith("_pearson")]
    for name in names:
        r = values[f"{name}_pearson"]
        finite = r[np.isfinite(r)]
        entry = {"pearson": {"mean": float(finite.mean()), "min": float(finite.min()),
                             "share_above_0.99": float((finite > 0.99).mean()), "constant_maps": int((~np.isfinite(r)).sum())},
                 "metrics": {}}
        for metric in VARIANT_METRICS:
            paired = paired_difference(values[f"{name}_{metric}"], values[f"exact_{metric}"], HIGHER_IS_BETTER[metric],
                                       resamples)
            entry["metrics"][metric] = {"variant_mean": bootstrap_mean(values[f"{name}_{metric}"], resamples).as_dict(),
                                        "exact_mean": float(np.nanmean(values[f"exact_{metric}"])),
                                        "variant_minus_exact": paired.as_dict()}
        report["variants"][name] = entry
    return report


def variants_phase(out: Path, phases, args) -> dict:
    """Run the comparison on the first --variant-images test images (reused when an earlier run finished it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fusioncam.bundle import load_bundle

    from .fashion_mnist import BUNDLE, TEST_TABLE

    channels = tuple(args.fast_channels) if isinstance(args.fast_channels, (tuple, list)) else (args.fast_channels,)
    settings = {"images": args.variant_images, "fast_channels": list(channels), "step": args.step}
    earlier = phases.done("variants")
    path = out / "variants.parquet"
    if earlier and earlier.get("settings") == settings and path.is_file():
        return earlier
    start = time.perf_counter()
    manifest = load_bundle(out / BUNDLE).manifest
    ids, images, _ = decoded_images(out / TEST_TABLE, args.variant_images, manifest)
    values = compare_variants(out / BUNDLE, images, channels, args.step, scorer_batch=args.scorer_batch)
    pq.write_table(pa.table({"id": ids, **values}), path, compression="zstd")
    report = variant_report(values, args.resamples)
    print("variants: Pearson mean " + ", ".join(f"{name} {v['pearson']['mean']:.4f}" for name, v in
                                               report["variants"].items())
          + f" on {len(ids)} images ({time.perf_counter() - start:.0f} s)", flush=True)
    return phases.finish("variants", {"settings": settings, "seconds": time.perf_counter() - start, **report})
