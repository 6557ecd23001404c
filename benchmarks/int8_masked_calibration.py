"""`python -m benchmarks.int8_masked_calibration`: the INT8 scorer calibrated on Score-CAM's masked images instead of
natural photos, measured against exact float32 exactly as `python -m benchmarks.int8_scorer` measures the default.

The scorer's real inputs in the sweep are masked images x * norm(up(A_k)), whose activation ranges differ from a
natural photo's. Calibration here: photos that are NOT the five evaluation photos (darknet's sample photos in
/usr/share/darknet/data), each photo itself, and `--per-photo` of its masked images, made by the runtime's own mask
code (the float32 explainer's explain pass gives A; `runtime.methods.compat.arithmetic(...).mask_min_max` and
`.write_masked_inputs`, the kernels the sweep writes its rows with) for channels drawn at random (seeded) among the
photo's non-constant ones, plus the all-zeros image. Then `benchmarks.int8_scorer.study` on EfficientNet-Lite0
`_blocks.15`: Fusion-CAM float32 vs INT8 per image in one run, map correlation with exact float32. `--with-samples`
adds the five evaluation photos and their masked images (an upper bound: calibrated on the inputs it is scored on),
`--method` ONNX Runtime's calibration method, `--seed` another draw of channels.
Results: benchmarks/results/int8-scorer-<cpu>-<label>.* (label default masked-calibration).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import fusioncam
from fusioncam.export.int8_scorer import Int8Settings
from fusioncam.graph_names import ACTIVATIONS
from fusioncam.images import IMAGENET_MEAN, IMAGENET_STD, load_batch, preprocess, sample_images
from fusioncam.runtime.methods.compat import arithmetic

from .int8_scorer import MODELS, study
from .report import RESULTS, cpu_label, machine_record, save_report

DARKNET_PHOTOS = Path("/usr/share/darknet/data")


def sweep_masked_images(bundle, photos: np.ndarray, per_photo: int, seed: int = 0) -> np.ndarray:
    """float32 [N * per_photo, 3, H, W]: for each photo, `per_photo` of the Score-CAM sweep's masked images
    x * norm(up(A_k)) (channels k drawn at random among its non-constant ones; all of them where it has fewer),
    written by the runtime's own mask kernels from the float32 explainer's activations."""
    explainer = fusioncam.Explainer(bundle, device="cpu")
    backend = explainer.backend
    explain, captured = backend.explain, []

    def capturing(images, feed):
        graph = explain(images, feed)
        captured.append((np.array(images, dtype=np.float32), np.array(graph[ACTIVATIONS], dtype=np.float32)))
        return graph

    backend.explain = capturing
    try:
        explainer.explain(photos, methods=("gradcam",))
    finally:
        backend.explain = explain
    images, acts = captured[0]
    math = arithmetic(backend.kernels, explainer.compat)
    mins, maxs = math.mask_min_max(acts, tuple(images.shape[2:]))
    mins, maxs = np.asarray(mins), np.asarray(maxs)
    rng = np.random.default_rng(seed)
    image_index, channel_index = [], []
    for n in range(len(images)):
        active = np.flatnonzero(maxs[n] > mins[n])
        chosen = np.sort(rng.choice(active, min(per_photo, len(active)), replace=False))
        image_index += [n] * len(chosen)
        channel_index += chosen.tolist()
    out = np.empty((len(image_index), *images.shape[1:]), dtype=np.float32)
    math.write_masked_inputs(images, acts, mins, maxs, np.asarray(image_index, np.int64),
                             np.asarray(channel_index, np.int64), out, 0)
    explainer.close()
    return out


def masked_calibration(files: list[Path], per_photo: int, with_samples: bool, seed: int = 0):
    """calibrate(bundle) for benchmarks.int8_scorer.study: the photos in `files` (and the five sample photos with
    `with_samples`), each photo's `per_photo` masked images (channels drawn with `seed`), and the all-zeros image."""

    def calibrate(bundle) -> tuple[np.ndarray, str]:
        size, mean, std = tuple(bundle.manifest.input_size), bundle.manifest.mean, bundle.manifest.std
        photos, _ = load_batch([str(f) for f in files], size, mean, std)
        named = ", ".join(f.stem for f in files)
        if with_samples:
            samples = np.stack([preprocess(rgb, size, mean, std) for rgb in sample_images().values()])
            photos = np.concatenate([photos, samples])
            named += ", and the 5 sample photos"
        masked = sweep_masked_images(bundle, photos, per_photo, seed)
        zeros = np.zeros((1, *photos.shape[1:]), dtype=np.float32)
        described = (f"{len(photos)} photos ({named}), {len(masked)} of the sweep's masked images of them "
                     f"({per_photo} random channels per photo, seed {seed}) and the all-zeros image")
        print(f"calibration: {described}", flush=True)
        return np.concatenate([photos, masked, zeros]), described

    return calibrate


def main(argv: list[str] | None = None) -> int:
    """Calibrate on masked images, measure against float32, write JSON + markdown."""
    from .int8_scorer import markdown

    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8_masked_calibration", description=__doc__)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["efficientnet_lite0"])
    parser.add_argument("--per-photo", type=int, default=32, help="masked images per calibration photo (default 32)")
    parser.add_argument("--with-samples", action="store_true",
                        help="also calibrate on the five sample photos (the evaluation photos) and their masked images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random channels (default 0)")
    parser.add_argument("--method", choices=("MinMax", "Percentile", "Entropy"), default="MinMax",
                        help="ONNX Runtime's calibration method (Int8Settings.method; default MinMax)")
    parser.add_argument("--images", type=int, default=5, help="how many of the five sample photos are explained")
    parser.add_argument("--skip-faithfulness", action="store_true")
    parser.add_argument("--label", default="masked-calibration")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fusioncam-int8-masked"))
    args = parser.parse_args(argv)

    files = sorted(DARKNET_PHOTOS.glob("*.jpg"))
    if not files:
        parser.error(f"no calibration photos in {DARKNET_PHOTOS} (darknet's sample data)")
    args.work.mkdir(parents=True, exist_ok=True)
    samples = dict(list(sample_images().items())[: args.images])
    names = list(samples)
    images = np.stack([preprocess(rgb, (224, 224), IMAGENET_MEAN, IMAGENET_STD) for rgb in samples.values()])
    calibrate = masked_calibration(files, args.per_photo, args.with_samples, args.seed)
    report: dict = {"images": names, "models": [], "per_photo": args.per_photo, "with_samples": args.with_samples,
                    "seed": args.seed, "method": args.method}
    stem = f"int8-scorer-{cpu_label()}-{args.label}"
    for name in args.models:
        report["models"].append(study(name, args.work, images, names, not args.skip_faithfulness, calibrate=calibrate,
                                      settings=Int8Settings(method=args.method)))
        report["machine_record"] = machine_record()
        save_report(args.out, stem, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
