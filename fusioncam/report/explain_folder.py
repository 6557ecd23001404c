"""Explaining images into an output folder: each image's files, then `index.html`, `results.json` and a summary table.

Per image NAME: `NAME_panel.png` (the image, then each chosen method's map; with Fusion-CAM also the Grad-CAM
and Score-CAM it combines) and, per chosen method, an overlay PNG at the image's own resolution and the raw float32 map as `.npy` (see `output_files`).
Every file is written atomically; images that cannot be read or explained are skipped and listed.
"""

from __future__ import annotations

import html
import io
import json
import os
import re
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np

from ..atomic import write_bytes_atomic, write_text_atomic
from ..errors import FusionCamError, InputError
from ..images import preprocess
from ..interrupts import Interrupted, active
from ..output_guard import check_output_folder, create_folder, record_files
from ..progress import ProgressBar
from ..run_lock import run_lock
from ..runtime.input_checks import ARGMAX, resolve_targets
from ..runtime.methods import METHOD_TITLES, METHODS, check_methods
from .pictures import colormap_code, overlay, panel

FILE_TAGS = {"gradcam++": "gradcampp"}  # method -> how file names spell it
INDEX_HTML = "index.html"
RESULTS_JSON = "results.json"


@dataclass
class ImageSource:
    """One image to explain: its output name, how to name it in messages, and how to read it as uint8 RGB."""

    name: str
    label: str
    read: Callable[[], np.ndarray]
    path: Path | None = None


@dataclass
class ImageRecord:
    """What one explained image produced; a row of results.json and a card of index.html."""

    name: str
    input: str
    class_index: int
    class_name: str
    probability: float
    betas: dict[str, float]
    degenerate: bool
    seconds: float
    forwards_run: int
    files: dict[str, str]
    fusion_stats: dict[str, object] = field(default_factory=dict)
    union_betas: dict[str, float] = field(default_factory=dict)  # when Union-CAM was chosen
    region: dict[str, object] = field(default_factory=dict)  # segmentation bundles: the explained region


@dataclass
class Failure:
    """An input that was skipped, and why."""

    input: str
    error: str


@dataclass
class RunSummary:
    """Everything one run wrote: per-image records, the inputs it had to skip, and whether a signal stopped it."""

    out: Path
    records: list[ImageRecord]
    failures: list[Failure]
    interrupted: str | None = None  # SIGINT or SIGTERM when the run stopped early
    not_explained: list[str] = field(default_factory=list)  # inputs an interrupted run never reached
    earlier_files: dict[str, str | None] = field(default_factory=dict)  # what a previous run recorded writing here

    @property
    def all_succeeded(self) -> bool:
        return not self.failures and bool(self.records) and self.interrupted is None

    def written_files(self) -> dict[str, str | None]:
        """Every file fusioncam wrote into the folder, by this run or an earlier one, with its SHA-256 (the record
        that lets the next run replace exactly these files, and refuse them once someone changed them)."""
        new = [INDEX_HTML, RESULTS_JSON] + [name for record in self.records for name in record.files.values()]
        return record_files(self.out, self.earlier_files, new)


def output_files(name: str, methods: Sequence[str]) -> dict[str, str]:
    """File names one image gets: the panel, and per method an overlay PNG and a raw .npy map."""
    files = {"panel": f"{name}_panel.png"}
    for method in methods:
        tag = FILE_TAGS.get(method, method)
        files[f"{method}_overlay"] = f"{name}_overlay.png" if method == "fusion" else f"{name}_{tag}_overlay.png"
        files[f"{method}_npy"] = f"{name}_{tag}.npy"
    return files


FUSION_INPUTS = ("gradcam", "scorecam")  # computed by Fusion-CAM anyway: shown beside it in the panel at no cost


def panel_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """The panel's maps, in canonical order: the chosen methods, and with Fusion-CAM the Grad-CAM and Score-CAM it
    is built from (computed for it anyway). Only these are computed: `--methods gradcam` runs no Score-CAM sweep (a
    fraction of a second per image on the CPU instead of 10-20 s)."""
    chosen = check_methods(methods)
    return check_methods(chosen + FUSION_INPUTS) if "fusion" in chosen else chosen


MAX_STEM_BYTES = 200  # UTF-8 bytes of an output name's stem: with its longest suffix, under the usual 255-byte limit


def safe_stem(stem: str) -> str:
    """An input file's stem as an output name valid on every file system fusioncam writes to: letters and digits of
    any script are kept (composed, NFC), every other run of characters (separators, :*?"<>|, controls) becomes
    `_`, and the name is cut to MAX_STEM_BYTES bytes of UTF-8 at a character boundary; "image" when nothing is left."""
    stem = re.sub(r"[^\w.-]+", "_", unicodedata.normalize("NFC", stem)).strip("._")
    while len(stem.encode("utf-8")) > MAX_STEM_BYTES:
        stem = stem[:-1]
    return stem.rstrip("._") or "image"


def unique_names(labels: Sequence[str], files_of: Callable[[str], Sequence[str]] = lambda name: ()) -> list[str]:
    """File-name-safe output names from input names (their stems), in order, numbered (`_2`, `_3`, ...) where a name,
    or one of the files `files_of(name)` it gets, would collide with an earlier one (ignoring case)."""
    names: list[str] = []
    taken: set[str] = set()
    for label in labels:
        base = safe_stem(Path(label).stem)
        name, count = base, 1
        while {name.lower(), *(f.lower() for f in files_of(name))} & taken:
            count += 1
            name = f"{base}_{count}"
        taken |= {name.lower(), *(f.lower() for f in files_of(name))}
        names.append(name)
    return names


def output_names(labels: Sequence[str]) -> list[str]:
    """Output names whose files never collide, whichever methods are chosen (`a.png` and `a.jpg` become `a` and
    `a_2`; an input named like another's output file, e.g. `a_gradcam.png` beside `a.png`, is numbered too)."""
    return unique_names(labels, lambda name: list(output_files(name, METHODS).values()))


def planned_files(sources: Sequence[ImageSource], methods: Sequence[str],
                  instances_per_image: int | None = None) -> list[str]:
    """Every file name a run writes into its output folder (a detection bundle's: up to instances_per_image
    instances per image, report/detection_folder.py)."""
    planned = [INDEX_HTML, RESULTS_JSON]
    for source in sources:
        if instances_per_image is not None:
            from .detection_folder import detection_files

            planned += detection_files(source.name, methods, instances_per_image).values()
        else:
            planned += output_files(source.name, methods).values()
    return planned


def check_output_dir(out: str | os.PathLike, sources: Sequence[ImageSource], methods: Sequence[str],
                     instances_per_image: int | None = None) -> dict[str, str | None]:
    """Refuse an output folder where a file this run writes would replace an input or a file fusioncam did not write
    (output_guard.check_output_folder); nothing is created. Returns the files earlier runs recorded there."""
    inputs = {os.path.realpath(s.path): s.label for s in sources if s.path is not None}
    return check_output_folder(out, planned_files(sources, methods, instances_per_image), inputs)


def explain_into_folder(
    explainer,
    sources: Sequence[ImageSource],
    out: str | os.PathLike,
    target=None,
    methods: Sequence[str] = ("fusion",),
    colormap: str = "jet",
    stream: TextIO | None = None,
    regions=None,
    instances=None,
) -> RunSummary:
    """Explain each source separately with `explainer` and write its files; bad images are reported and skipped.

    `target` is one class for every image (index, name or None for each image's top class). Messages about
    skipped images, and a progress bar when `stream` is a terminal, go to `stream` (default stderr). `regions`
    (segmentation bundles): "predicted" (None), "all" or a box, for every image (see Explainer.explain).
    `instances` (detection bundles): an InstanceSelection (min_score, max_instances) for every image; each image
    then gets its detections picture and one panel per instance (report/detection_folder.py).

    A stop signal (see interrupts.stop_signals) ends the run at the next scorer batch or image: the image in progress
    is dropped whole, and results.json / index.html record the finished ones, marked incomplete
    (`summary.interrupted`).
    """
    methods = check_methods(methods)
    colormap_code(colormap)  # an unknown colormap fails before any image is explained
    manifest = explainer.bundle.manifest
    target = int(resolve_targets(target, 1, manifest.num_classes, manifest.class_names)[0])  # bad names fail up front
    target = None if target == ARGMAX else target  # the top class is None to explain(): -1 would be the last class
    per_image = getattr(instances, "max_instances", None)  # a detection run's most instances per image
    chosen = {} if instances is None else {"instances": instances}
    stop = active()
    with run_lock(out), stop.deferred():  # re-entrant: the CLI already holds it
        earlier = check_output_dir(out, sources, methods, per_image)
        out = Path(out)
        create_folder(out)
        progress = ProgressBar(len(sources), stream)
        summary = RunSummary(out, [], [], earlier_files=earlier)
        reached = 0  # sources finished (explained or skipped)
        for source in sources:
            if stop.requested:
                break
            progress.show(source.label)
            try:
                rgb = source.read()
                batch = preprocess(rgb, manifest.input_size, manifest.mean, manifest.std)[None]
                started = time.perf_counter()
                report = progress.batch_reporter(source.label, started)
                explanation = explainer.explain(batch, targets=target, methods=panel_methods(methods),
                                                names=[source.label], on_batch=lambda done, total: (
                                                    stop.check(), report(done, total)), regions=regions, **chosen)
                seconds = time.perf_counter() - started
            except Interrupted:
                break
            except FusionCamError as exc:
                summary.failures.append(Failure(source.label, str(exc)))
                progress.note(f"skipped {source.label}: {exc}")
            else:
                summary.records.append(write_image_outputs(out, source, rgb, explanation, seconds, methods, colormap))
            reached += 1
            progress.advance(source.label)
        progress.close()
        if stop.requested and reached < len(sources):
            summary.interrupted = stop.received
            summary.not_explained = [s.label for s in sources[reached:]]
        write_index_html(summary, explainer, methods)
        write_results_json(summary, explainer, methods)  # last: it records index.html's hash
    return summary


def write_image_outputs(out: Path, source: ImageSource, rgb: np.ndarray, explanation, seconds: float,
                        methods: Sequence[str], colormap: str = "jet") -> ImageRecord:
    """Encode all of one image's files in memory first, then write each atomically; return its record."""
    if getattr(explanation, "region_weights", None) is not None:  # a segmentation bundle's explanation
        from .segmentation import write_segmentation_outputs

        return write_segmentation_outputs(out, source, rgb, explanation, seconds, methods, colormap)
    if getattr(explanation, "image_index", None) is not None:  # a detection bundle's: one row per instance
        from .detection_folder import write_detection_outputs

        size = tuple(next(iter(explanation.maps.values())).shape[1:])
        return write_detection_outputs(out, source, rgb, explanation, seconds, methods, size,
                                       explanation.logits.shape[1], colormap)
    files = output_files(source.name, methods)
    title = f"{explanation.class_name(0)}  p={float(explanation.probabilities[0]):.3f}"
    tiles = [(METHOD_TITLES[m], explanation.maps[m][0]) for m in panel_methods(methods)]
    write_map_files(out, files, panel(rgb, tiles, title, colormap=colormap), rgb, explanation, methods, colormap)
    return image_record(source, explanation, seconds, files)


def write_map_files(out: Path, files: dict, panel_rgb: np.ndarray, rgb: np.ndarray, explanation,
                    methods: Sequence[str], colormap: str, outline=None) -> None:
    """Encode the panel and each method's overlay PNG (passed through `outline` when given) and raw .npy map in
    memory, then write them all (or none)."""
    encoded = {files["panel"]: _png_bytes(panel_rgb)}
    for method in methods:
        cam = explanation.maps[method][0]
        picture = overlay(rgb, cam, colormap)
        encoded[files[f"{method}_overlay"]] = _png_bytes(outline(picture) if outline is not None else picture)
        encoded[files[f"{method}_npy"]] = _npy_bytes(cam.astype(np.float32))
    _write_all(out, encoded)


def image_record(source: ImageSource, explanation, seconds: float, files: dict, **extra) -> ImageRecord:
    """The results.json record of an explanation's first image (`extra`: more ImageRecord fields). Without
    Fusion-CAM, betas and fusion_stats are empty and degenerate is False; without a Score-CAM sweep (Grad-CAM,
    Grad-CAM++, XGrad-CAM only) forwards_run is 0."""
    fusion_stats: dict[str, object] = {}
    if explanation.fusion is not None:
        fusion = explanation.fusion[0]
        peak = np.unravel_index(int(np.argmax(fusion)), fusion.shape)
        fusion_stats = {"shape": list(fusion.shape), "min": float(fusion.min()), "max": float(fusion.max()),
                        "mean": float(fusion.mean()), "peak_yx": [int(peak[0]), int(peak[1])]}
    degenerate = explanation.degenerate
    return ImageRecord(
        name=source.name, input=source.label, class_index=int(explanation.classes[0]),
        class_name=explanation.class_name(0), probability=float(explanation.probabilities[0]),
        betas=explanation.beta_row(0), degenerate=bool(degenerate[0]) if degenerate is not None else False,
        seconds=float(seconds),
        forwards_run=int(explanation.forwards_run[0]) if explanation.forwards_run is not None else 0, files=files,
        fusion_stats=fusion_stats, union_betas=explanation.union_beta_row(0), **extra,
    )


def _png_bytes(rgb: np.ndarray) -> bytes:
    """PNG file bytes of a uint8 RGB image."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise FusionCamError("OpenCV could not encode a PNG")
    return data.tobytes()


def _npy_bytes(array: np.ndarray) -> bytes:
    """.npy file bytes of an array."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _write_all(out: Path, encoded: dict[str, bytes]) -> None:
    """Write one image's files; if one fails (or the run is stopped), remove those already written: none or all."""
    written: list[Path] = []
    try:
        for file_name, data in encoded.items():
            _write(out / file_name, data)
            written.append(out / file_name)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _write(path: Path, data: bytes) -> None:
    """Atomic write whose OS failures (disk full, permissions) become one clear error."""
    try:
        write_bytes_atomic(path, data)
    except OSError as exc:
        raise FusionCamError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_results_json(summary: RunSummary, explainer, methods: Sequence[str]) -> Path:
    """results.json: the model, the device, one entry per explained image and the skipped inputs. The model names
    its first target layer (target_layer, as ever) and every one (target_layers: a several-layer bundle's maps are
    aggregated over them, runtime/layer_aggregation.py)."""
    from .. import __version__

    manifest = explainer.bundle.manifest
    document = {
        "fusioncam_version": __version__,
        "model": {"source": manifest.source, "target_layer": manifest.target_layer,
                  "target_layers": list(explainer.bundle.layer_names), "input_size": list(manifest.input_size),
                  "bundle": str(explainer.bundle.path)},
        "device": str(explainer.device),
        "precision": explainer.precision,
        "max_channels": explainer.max_channels,  # fast mode's k; null: exact
        "compat": explainer.compat,  # null: the authors' Grad-CAM++ and Score-CAM; "pytorch-grad-cam": its arithmetic
        "methods": list(methods),
        "complete": summary.interrupted is None,
        "interrupted_by": summary.interrupted,  # SIGINT or SIGTERM; null: the run finished
        "images": [asdict(record) for record in summary.records],
        "failed": [asdict(failure) for failure in summary.failures],
        "not_explained": summary.not_explained,  # inputs an interrupted run did not reach
        "written_files": summary.written_files(),  # what fusioncam may replace in this folder next time
    }
    path = summary.out / RESULTS_JSON
    try:
        write_text_atomic(path, json.dumps(document, indent=2) + "\n")
    except OSError as exc:
        raise FusionCamError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


_PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { font-size: 20px; margin: 0 0 4px; } p.meta { color: #555; margin: 0 0 20px; font-size: 14px; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 12px; margin-bottom: 20px; }
.card img { max-width: 100%; height: auto; display: block; }
.card h2 { font-size: 16px; margin: 0 0 8px; }
table { border-collapse: collapse; font-size: 13px; margin-top: 8px; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; } th { background: #f0f0f0; }
.bad { color: #b00; font-weight: bold; } .files a { margin-right: 12px; font-size: 13px; }
"""


def _value_table(title: str, cells: dict[str, str]) -> str:
    """An HTML table: a header of names, then one row of already formatted cells labelled `title`."""
    heads = "".join(f"<th>{html.escape(name)}</th>" for name in cells)
    return f"<table><tr><th></th>{heads}</tr><tr><th>{html.escape(title)}</th>" + "".join(
        f"<td>{cell}</td>" for cell in cells.values()) + "</tr></table>"


def _card(record: ImageRecord, chosen: Sequence[str], shown: str) -> str:
    """One image's card: its panel (the methods `shown`), betas, and links to each chosen method's files."""
    esc = html.escape
    flag = '<span class="bad">yes</span>' if record.degenerate else "no"
    if record.betas:
        tables = _value_table("Fusion-CAM", {**{name: f"{value:.4f}" for name, value in record.betas.items()},
                                             "degenerate": flag, "seconds": f"{record.seconds:.2f}"})
    else:
        tables = _value_table("run", {"seconds": f"{record.seconds:.2f}"})
    if record.union_betas:
        tables += _value_table("Union-CAM", {name: f"{value:.4f}" for name, value in record.union_betas.items()})
    links = "".join(
        f"<b>{esc(METHOD_TITLES[method])}</b> "
        + "".join(f'<a href="{esc(record.files[key])}">{esc(record.files[key])}</a>'
                  for key in (f"{method}_overlay", f"{method}_npy") if key in record.files)
        for method in chosen
    )
    instances = getattr(record, "instances", [])  # a detection record: each instance's panel
    panels = "".join(f'<h2>instance {i["index"]}: {esc(i["class_name"])} (score {i["score"]:.3f})</h2>'
                     f'<img src="{esc(i["files"]["panel"])}" alt="instance {i["index"]} panel">' for i in instances)
    return (
        f'<div class="card"><h2>{esc(record.name)}: {esc(record.class_name)} '
        f"(class {record.class_index}, p = {record.probability:.3f})</h2>"
        f'<img src="{esc(record.files["panel"])}" alt="{esc(record.name)} panel">'
        f'<p class="meta">panel: image, {esc(shown)}</p>{tables}'
        f'<p class="files">{links}</p>{panels}<p class="meta">input: {esc(record.input)}</p></div>'
    )


def _layers_words(layers: Sequence[str]) -> str:
    """index.html's words for the target layers: 'layer a', or 'layers a, b (maps aggregated over them)'."""
    if len(layers) == 1:
        return f"layer {html.escape(layers[0])}"
    return f"layers {html.escape(', '.join(layers))} (maps aggregated over them)"


def write_index_html(summary: RunSummary, explainer, methods: Sequence[str]) -> Path:
    """index.html: a static gallery of the panels, which show every computed method (inline CSS, relative links)."""
    esc = html.escape
    manifest = explainer.bundle.manifest
    shown = ", ".join(METHOD_TITLES[m] for m in panel_methods(methods))
    cards = [_card(record, methods, shown) for record in summary.records]
    failed = "".join(f"<li>{esc(f.input)}: {esc(f.error)}</li>" for f in summary.failures)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>fusioncam results</title>'
        f"<style>{_PAGE_CSS}</style></head><body>"
        f"<h1>Fusion-CAM explanations</h1>"
        f'<p class="meta">model {esc(manifest.source)}, {_layers_words(explainer.bundle.layer_names)}, '
        f"{manifest.input_size[0]}x{manifest.input_size[1]}, device {esc(str(explainer.device))}; "
        f"{len(summary.records)} explained, {len(summary.failures)} skipped</p>"
        + (f'<p class="bad">Incomplete: the run was interrupted ({esc(summary.interrupted)}); '
           f"{len(summary.not_explained)} input(s) were not explained.</p>" if summary.interrupted else "")
        + "".join(cards)
        + (f'<div class="card"><h2 class="bad">Skipped inputs</h2><ul>{failed}</ul></div>' if failed else "")
        + "</body></html>\n"
    )
    path = summary.out / INDEX_HTML
    try:
        write_text_atomic(path, page)
    except OSError as exc:
        raise FusionCamError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def summary_table(records: Sequence[ImageRecord]) -> str:
    """A plain-text table: image, class, probability, seconds."""
    rows = [("image", "class", "probability", "seconds")]
    rows += [(r.name, r.class_name, f"{r.probability:.3f}", f"{r.seconds:.2f}") for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for row in rows:
        lines.append(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}")
    return "\n".join(lines)


def file_sources(paths: Sequence[str | os.PathLike]) -> list[ImageSource]:
    """Image files as sources, read one at a time (a bad file fails alone), with collision-free output names."""
    from ..images import MAX_WORKING_SIDE, read_rgb

    paths = [Path(p) for p in paths]
    return [ImageSource(name, str(path), lambda path=path: read_rgb(path, max_side=MAX_WORKING_SIDE), path)
            for name, path in zip(output_names([p.name for p in paths]), paths)]


def sample_sources(names: Sequence[str] | None = None) -> list[ImageSource]:
    """The bundled sample photos (astronaut, chelsea, coffee, rocket, motorcycle), or the named subset."""
    from ..images import sample_images

    samples = sample_images()
    names = list(names) if names else list(samples)
    unknown = [n for n in names if n not in samples]
    if unknown:
        raise InputError(f"unknown sample image(s) {', '.join(unknown)}; choose from {', '.join(samples)}")
    return [ImageSource(name, name, lambda image=samples[name]: image) for name in dict.fromkeys(names)]
