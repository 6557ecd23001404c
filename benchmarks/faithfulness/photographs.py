"""Faithfulness on every real photograph at hand, with real ImageNet weights: EfficientNet-Lite0, Lite1 and Lite2.

    python -m benchmarks.faithfulness.photographs [--models lite0,lite1,lite2] [--out DIR] [--pictures DIR]

Each photograph the installed packages ship (benchmarks/faithfulness/photo_list.py; Debian's darknet pictures
need `apt-get install darknet`, and are left out with that hint when absent) is resized to the model's input and
explained for the model's top class (there are no labels). Per method and image: Average Drop, Increase in
Confidence, deletion and insertion AUC (fusioncam.metrics.evaluation.evaluate_maps) and ROAD MoRF, LeRF and
combined (fusioncam.metrics.road.road_scores); per model the method table with 95% bootstrap intervals and the
paired table, Fusion-CAM minus each method (benchmarks/faithfulness/tables.py). This is not the papers' ImageNet
protocol: about 18 photographs, no labels, the top class explained.

Out: `<out>/faithfulness-photographs-<machine>.{json,md}` (machine, versions, commit), and in `<pictures>` per
model a picture grid (photo | each method's map) for a few photos and the per-image values as CSV.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from fusioncam import Explainer
from fusioncam.atomic import write_bytes_atomic, write_text_atomic
from fusioncam.errors import InputError
from fusioncam.images import load_batch
from fusioncam.metrics.evaluation import evaluate_maps
from fusioncam.metrics.road import ROAD_NOISE, road_scores
from fusioncam.report.evaluation import method_title
from fusioncam.report.explain_folder import _png_bytes
from fusioncam.report.pictures import BACKGROUND, panel
from fusioncam.runtime.methods import check_methods, methods_for_task

from ..report import RESULTS, cpu_label, machine_record, save_report
from .lite_models import LITE_MODELS, lite_bundle
from .photo_list import DARKNET_DATA, SKIMAGE_LEFT_OUT, Photo, installed_photos
from .tables import METRIC_COLUMNS, FaithfulnessTables, faithfulness_tables, paired_legend

PAPER_METHODS = ("gradcam", "gradcam++", "xgradcam", "scorecam", "groupcam", "unioncam", "fusion")
DEFAULT_CURVE_STEPS = 10  # deletion/insertion: 10% of the pixels per step
DEFAULT_ROAD_PERCENTILES = (50,)
GRID_PHOTOS = ("chelsea", "coffee", "dog", "grace_hopper")
GRID_TILE = 112
WORK = Path(tempfile.gettempdir()) / "fusioncam-faithfulness-photographs"
PICTURES = Path(__file__).resolve().parents[2] / "docs" / "faithfulness" / "photos"
PROTOCOL_NOTE = ("This is not the papers' ImageNet protocol (Score-CAM: 2,000 labelled ImageNet validation images): "
                 "these are the real photographs installed packages ship, without labels, so each image is "
                 "explained and measured for the model's own top class; the whole image is resized to the model's "
                 "input (no crop).")


@dataclass
class PhotoRow:
    """One photograph's top class and every method's metric values on it."""

    photo: Photo
    class_index: int
    class_name: str
    probability: float
    values: dict[str, dict[str, float]]  # method -> metric -> value
    seconds: float


@dataclass
class ModelRun:
    """One model's rows, settings and the maps kept for the picture grid."""

    key: str
    methods: tuple[str, ...]
    step: int
    road_percentiles: tuple[int, ...]
    target_layer: str
    rows: list[PhotoRow] = field(default_factory=list)
    grid: list[tuple[str, np.ndarray, dict[str, np.ndarray]]] = field(default_factory=list)
    seconds: float = 0.0

    def per_method(self) -> dict[str, dict[str, np.ndarray]]:
        """{method: {metric: float64 [photos]}} in the photos' order."""
        metrics = list(self.rows[0].values[self.methods[0]]) if self.rows else []
        return {m: {k: np.array([row.values[m][k] for row in self.rows], dtype=np.float64) for k in metrics}
                for m in self.methods}

    @cached_property
    def tables(self) -> FaithfulnessTables:
        """The method and paired tables of the finished run (computed once: 10,000 bootstrap resamples each)."""
        return faithfulness_tables(self.per_method())


def curve_step(side: int, curve_steps: int) -> int:
    """Pixels per deletion/insertion step so that a curve has `curve_steps` steps on a side x side input."""
    if curve_steps < 1:
        raise InputError(f"--curve-steps must be at least 1; got {curve_steps}")
    return math.ceil(side * side / curve_steps)


def photo_values(explainer: Explainer, image: np.ndarray, name: str, methods: Sequence[str], step: int,
                 road_percentiles: Sequence[int]):
    """(Explanation of one preprocessed image [3, H, W] for its top class, {method: {metric: value}}).

    The four metrics come from evaluate_maps (Y reused from the explanation); ROAD scores every method's map of the
    image in one road_scores call (the image repeated once per method, the same noise for each, as its noise is
    keyed by the image's bytes)."""
    batch = image[None]
    explanation = explainer.explain(batch, methods=methods, names=[name])
    evaluation = evaluate_maps(explainer, batch, {m: explanation.maps[m] for m in methods}, explanation.classes,
                               step, [name], explanation=explanation)
    values = {m: {metric: float(v[0]) for metric, v in evaluation.scores[m].per_image.items()} for m in methods}
    if road_percentiles:
        repeated = np.repeat(batch, len(methods), axis=0)
        maps = np.concatenate([explanation.maps[m] for m in methods], axis=0)
        targets = np.repeat(explanation.classes, len(methods))
        road = road_scores(explainer, repeated, maps, targets, percentiles=tuple(road_percentiles))
        for i, m in enumerate(methods):
            values[m].update(road_morf=float(road.morf[i]), road_lerf=float(road.lerf[i]),
                             road_combined=float(road.combined[i]))
    return explanation, values


def rows_folder(work: Path, key: str, methods: Sequence[str], step: int, road_percentiles: Sequence[int]) -> Path:
    """Where one model's finished photos are kept (one folder per model and settings), so a run can be split
    over several processes (--photos) or resumed: a photo already there is not measured again."""
    settings = json.dumps([key, list(methods), step, list(road_percentiles)])
    return work / key / hashlib.sha256(settings.encode()).hexdigest()[:16]


def _save_row(folder: Path, row: PhotoRow, target_layer: str, rgb: np.ndarray | None,
              maps: dict[str, np.ndarray] | None) -> None:
    if rgb is not None and maps is not None:
        buffer = io.BytesIO()
        np.savez(buffer, rgb=rgb, **{f"map_{i}": maps[m] for i, m in enumerate(maps)})
        write_bytes_atomic(folder / f"{row.photo.name}.npz", buffer.getvalue())
    record = {"photo": {"name": row.photo.name, "package": row.photo.package, "path": str(row.photo.path),
                        "subject": row.photo.subject},
              "class_index": row.class_index, "class_name": row.class_name, "probability": row.probability,
              "values": row.values, "seconds": row.seconds, "target_layer": target_layer}
    write_text_atomic(folder / f"{row.photo.name}.json", json.dumps(record) + "\n")


def measure_photos(key: str, photos: Sequence[Photo], methods: Sequence[str], step: int,
                   road_percentiles: Sequence[int], folder: Path, grid_photos: Sequence[str] = GRID_PHOTOS,
                   log=print) -> None:
    """Explain and measure each photo not yet in `folder` with one model; keep the maps of `grid_photos`."""
    todo = [p for p in photos if not (folder / f"{p.name}.json").is_file()]
    if not todo:
        return
    folder.mkdir(parents=True, exist_ok=True)
    bundle = lite_bundle(key)
    explainer = Explainer(bundle, device="cpu")
    side = LITE_MODELS[key].side
    images, shown = load_batch([p.path for p in todo], (side, side))
    names = bundle.manifest.class_names
    for photo, image, rgb in zip(todo, images, shown):
        t0 = time.perf_counter()
        explanation, values = photo_values(explainer, image, photo.name, methods, step, road_percentiles)
        index = int(explanation.classes[0])
        row = PhotoRow(photo, index, names[index] if names else str(index), float(explanation.probabilities[0]),
                       values, time.perf_counter() - t0)
        kept = photo.name in grid_photos
        _save_row(folder, row, bundle.manifest.target_layer, rgb if kept else None,
                  {m: explanation.maps[m][0] for m in methods} if kept else None)
        log(f"{LITE_MODELS[key].title} {photo.name}: {row.class_name} ({row.probability:.3f}), {row.seconds:.1f} s",
            flush=True)


def collected_run(key: str, photos: Sequence[Photo], methods: Sequence[str], step: int,
                  road_percentiles: Sequence[int], folder: Path) -> ModelRun:
    """The ModelRun of the photos measured so far in `folder` (in the photos' order; seconds: their sum)."""
    run = ModelRun(key, tuple(methods), step, tuple(road_percentiles), "")
    for photo in photos:
        path = folder / f"{photo.name}.json"
        if not path.is_file():
            continue
        saved = json.loads(path.read_text(encoding="utf-8"))
        run.target_layer = saved["target_layer"]
        run.rows.append(PhotoRow(photo, saved["class_index"], saved["class_name"], saved["probability"],
                                 saved["values"], saved["seconds"]))
        run.seconds += saved["seconds"]
        pictured = folder / f"{photo.name}.npz"
        if pictured.is_file():
            with np.load(pictured) as held:
                run.grid.append((photo.name, held["rgb"], {m: held[f"map_{i}"] for i, m in enumerate(methods)}))
    return run


def grid_picture(run: ModelRun) -> np.ndarray:
    """uint8 RGB: one row per kept photo, the photo then each method's map over it."""
    rows = []
    for name, rgb, maps in run.grid:
        row = next(r for r in run.rows if r.photo.name == name)
        title = f"{LITE_MODELS[run.key].title}, {name}: {row.class_name} ({row.probability:.2f})"
        rows.append(panel(rgb, [(method_title(m), maps[m]) for m in run.methods], title, tile_height=GRID_TILE,
                          image_label="photo"))
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=BACKGROUND[0]) for r in rows]
    return np.concatenate(padded, axis=0)


def per_image_csv(run: ModelRun) -> str:
    """One line per (photo, method): the photo, its top class and probability, and each metric's value."""
    metrics = [m for m in METRIC_COLUMNS if run.rows and m in run.rows[0].values[run.methods[0]]]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["photo", "package", "class_index", "class_name", "probability", "method", *metrics])
    for row in run.rows:
        for method in run.methods:
            writer.writerow([row.photo.name, row.photo.package, row.class_index, row.class_name,
                             f"{row.probability:.6f}", method, *(repr(row.values[method][m]) for m in metrics)])
    return out.getvalue()


def model_record(run: ModelRun, command: str) -> dict:
    """The JSON of one model's run: settings, photos with their top classes, per-image values, the tables, and what
    produced it (command, machine, versions, commit)."""
    model = LITE_MODELS[run.key]
    return {
        "key": run.key, "title": model.title, "weights_package": model.package, "input_size": [model.side, model.side],
        "target_layer": run.target_layer, "methods": list(run.methods), "step_pixels": run.step,
        "curve_steps": math.ceil(model.side * model.side / run.step),
        "road_percentiles": list(run.road_percentiles), "road_noise": ROAD_NOISE if run.road_percentiles else None,
        "seconds": run.seconds, "command": command,
        "photos": [{"name": r.photo.name, "package": r.photo.package, "subject": r.photo.subject,
                    "class_index": r.class_index, "class_name": r.class_name, "probability": r.probability,
                    "seconds": r.seconds} for r in run.rows],
        "per_image": {m: {k: v.tolist() for k, v in row.items()} for m, row in run.per_method().items()},
        "tables": run.tables.record,
        "machine_record": machine_record(),
    }


def record_tables(record: dict) -> FaithfulnessTables:
    """The tables of a model record, from its per-image values (the same numbers as record['tables']: fixed seed)."""
    return faithfulness_tables({m: {k: np.asarray(v, dtype=np.float64) for k, v in row.items()}
                                for m, row in record["per_image"].items()})


def model_markdown(record: dict, photo_names: Sequence[str] = ()) -> list[str]:
    """One model's section: settings, top classes, the method table and the paired table; `photo_names` (the photos
    found) that the record lacks are named as not measured."""
    machine = record["machine_record"]
    tables = record_tables(record)
    side = record["input_size"][0]
    road = (f"ROAD at percentile(s) {', '.join(map(str, record['road_percentiles']))} (noise {record['road_noise']})"
            if record["road_percentiles"] else "no ROAD")
    classes = ", ".join(f"{p['name']} {p['class_name']} ({p['probability']:.2f})" for p in record["photos"])
    lines = [f"## {record['title']} ({side}x{side}, target `{record['target_layer']}`)", "",
             f"n = {len(record['photos'])} photographs, {len(record['methods'])} methods; deletion/insertion step "
             f"{record['step_pixels']} pixels ({record['curve_steps']} steps); {road}. `{record['command']}`: "
             f"{record['seconds'] / 60:.1f} min, the sum of each photo's wall-clock seconds (photos may be split "
             f"over concurrent processes with --photos), on {machine.get('cpu_model')} ({machine.get('cpu_cores')} "
             f"cores, shared with other work, under nice), commit {machine.get('commit')}, "
             f"{machine.get('recorded_at')}.", "",
             f"Top classes: {classes}.", ""]
    unmeasured = [name for name in photo_names if name not in {p["name"] for p in record["photos"]}]
    if unmeasured:
        lines += [f"Not measured with this model (the run was stopped before them): {', '.join(unmeasured)}.", ""]
    lines += ["Each cell: the mean over the photographs [its 95% percentile-bootstrap interval, 10,000 resamples]; "
             "↓ lower is better, ↑ higher is better; the best mean of each column in bold.", "",
             tables.method_table, ""]
    if tables.paired_table:
        lines += [paired_legend(), "", tables.paired_table, ""]
    return lines


def study_markdown(records: Sequence[dict], missing: Sequence[str], photo_names: Sequence[str] = ()) -> str:
    """The study's markdown: the protocol note, and per model its settings and the two tables."""
    lines = ["# Faithfulness on real photographs with real ImageNet weights (EfficientNet-Lite0/1/2)", "",
             PROTOCOL_NOTE, "",
             "Per-image values, top classes and map pictures: [docs/faithfulness/photos/](../../docs/faithfulness/photos/).",
             ""]
    for record in records:
        lines += model_markdown(record, photo_names)
    if missing:
        lines += ["Pictures not found on this machine: " + "; ".join(missing) + ".", ""]
    lines += ["Left out of scikit-image's data: " + "; ".join(f"{k} ({v})" for k, v in SKIMAGE_LEFT_OUT.items())
              + ".", ""]
    return "\n".join(lines)


def _names(text: str, option: str, allowed: Sequence[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise InputError(f"{option}: unknown or no names {', '.join(unknown) or repr(text)}; "
                         f"choose from {', '.join(allowed)}")
    return names


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faithfulness.photographs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="lite0,lite1,lite2", help="comma list of lite0, lite1, lite2")
    parser.add_argument("--methods", default=",".join(methods_for_task("classification")),
                        help="methods on the models not in --paper-only (default: every classification method)")
    parser.add_argument("--paper-only", default="lite1,lite2",
                        help="models that run only the seven Fusion-CAM-paper methods ('' for none)")
    parser.add_argument("--photos", default="", help="comma list of photo names (default: every one found)")
    parser.add_argument("--curve-steps", type=int, default=DEFAULT_CURVE_STEPS,
                        help="steps of a deletion/insertion curve (step = ceil(H*W / steps) pixels)")
    parser.add_argument("--road-percentiles", default=",".join(map(str, DEFAULT_ROAD_PERCENTILES)),
                        help="ROAD percentiles, comma list, or 'none' to leave ROAD out")
    parser.add_argument("--darknet", default=str(DARKNET_DATA), help="Debian darknet's data folder")
    parser.add_argument("--out", default=str(RESULTS), help="folder of the JSON and markdown results")
    parser.add_argument("--pictures", default=str(PICTURES),
                        help="folder of the picture grids, the per-image CSV and each model's record (JSON)")
    parser.add_argument("--work", default=str(WORK),
                        help="folder of each measured photo's values (a rerun or another process with --photos "
                             "measures only the photos not there yet)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: assemble the report from the model records in --pictures")
    return parser.parse_args(argv)


def model_part(pictures: Path, key: str) -> Path:
    """Where one model's record is kept between runs (the study report is assembled from these)."""
    return pictures / f"{key}-values.json"


def assemble_report(out: Path, pictures: Path, missing: Sequence[str], photo_names: Sequence[str] = ()) -> dict:
    """The study report from every model record in `pictures` (lite0, lite1, lite2 order), written to `out`."""
    records = [json.loads(model_part(pictures, key).read_text(encoding="utf-8")) for key in LITE_MODELS
               if model_part(pictures, key).is_file()]
    if not records:
        raise InputError(f"no model records in {pictures}: run with --models first")
    report = {"study": "faithfulness on real photographs", "protocol_note": PROTOCOL_NOTE,
              "photos_missing": list(missing), "skimage_left_out": SKIMAGE_LEFT_OUT,
              "models": {record["key"]: record for record in records}, "machine_record": machine_record()}
    save_report(out, f"faithfulness-photographs-{cpu_label()}", report, study_markdown(records, missing, photo_names))
    return report


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_arguments(argv)
    pictures = Path(args.pictures)
    photos, missing = installed_photos(args.darknet)
    if args.report_only:
        return assemble_report(Path(args.out), pictures, missing, [p.name for p in photos])
    models = _names(args.models, "--models", list(LITE_MODELS))
    paper_only = set(_names(args.paper_only, "--paper-only", list(LITE_MODELS))) if args.paper_only.strip() else set()
    methods = tuple(dict.fromkeys(m.strip() for m in args.methods.split(",") if m.strip()))
    check_methods(methods)
    road = () if args.road_percentiles.strip().lower() == "none" else tuple(
        int(p) for p in args.road_percentiles.split(",") if p.strip())
    if not photos:
        raise InputError("no photographs found: install scikit-image, scikit-learn, matplotlib (and darknet)")
    command = ("python -m benchmarks.faithfulness.photographs "
               + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    pictures.mkdir(parents=True, exist_ok=True)
    chosen_photos = photos
    if args.photos.strip():
        wanted = _names(args.photos, "--photos", [p.name for p in photos])
        chosen_photos = [p for p in photos if p.name in wanted]
    for key in models:
        chosen = tuple(m for m in methods if m in PAPER_METHODS) if key in paper_only else methods
        step = curve_step(LITE_MODELS[key].side, args.curve_steps)
        folder = rows_folder(Path(args.work), key, chosen, step, road)
        measure_photos(key, chosen_photos, chosen, step, road, folder)
        run = collected_run(key, photos, chosen, step, road, folder)
        if run.grid:
            write_bytes_atomic(pictures / f"{key}-maps.png", _png_bytes(grid_picture(run)))
        write_text_atomic(pictures / f"{key}-per-image.csv", per_image_csv(run))
        write_text_atomic(model_part(pictures, key), json.dumps(model_record(run, command), indent=1) + "\n")
    return assemble_report(Path(args.out), pictures, missing, [p.name for p in photos])


if __name__ == "__main__":
    main()
