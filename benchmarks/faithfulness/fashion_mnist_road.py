"""ROAD (RemOve And Debias) of every method's stored maps, after the explain-dataset run, on as many test images as
a deadline allows: the host's sparse solves cost about 2 * P * methods solves per image (0.5 CPU-s per image for 19
methods at 9 percentiles, measured on this 2-core machine), several times the cost of everything else.

It reads explain-dataset's part files (float32 maps) in the order of their first image id, scores each part's
images with `fusioncam.metrics.road.road_scores` (the image's predicted class, noise 0.01 seeded by the image's
bytes, as `fusioncam evaluate --road` and `explain-dataset --road` compute it) and writes OUT/road/<part>.parquet
(`source`, `<tag>_road_morf`, `<tag>_road_lerf`, `<tag>_road_combined`); a rerun continues where it stopped.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import numpy as np

ROAD = "road"


def _deadline(text: str | None) -> float | None:
    """A UTC time of day 'HH:MM' today as a time.time() value (None: no deadline)."""
    if not text:
        return None
    now = datetime.datetime.now(datetime.timezone.utc)
    hour, minute = (int(x) for x in text.split(":"))
    return now.replace(hour=hour, minute=minute, second=0, microsecond=0).timestamp()


def ordered_parts(explained: Path) -> list[tuple[str, Path]]:
    """(first source, part file) of every part, sorted by first source."""
    from fusioncam.dataset.output import part_files, read_part

    firsts = []
    for path in part_files(explained):
        sources = read_part(path, ["source"]).column("source").to_pylist()
        if sources:
            firsts.append((min(sources), path))
    return sorted(firsts)


def road_phase(out: Path, phases, args) -> dict:
    """ROAD for every method on the parts' images, part by part, until args.road_until (UTC 'HH:MM')."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fusioncam import Explainer
    from fusioncam.dataset.output import read_part
    from fusioncam.dataset.rows import map_column, method_tag, tensor_maps
    from fusioncam.images import decode_model_input
    from fusioncam.metrics.road import road_scores

    from .fashion_mnist import BUNDLE, TEST_TABLE, explained_folder

    folder = out / ROAD
    folder.mkdir(exist_ok=True)
    deadline = _deadline(args.road_until)
    start = time.perf_counter()
    explainer = Explainer(out / BUNDLE, device="cpu", batch_size=args.scorer_batch)
    manifest = explainer.bundle.manifest
    table = pq.read_table(out / TEST_TABLE, columns=["id", "image"])
    png = dict(zip(table.column("id").to_pylist(), table.column("image").to_pylist()))
    stopped_early = False
    for _, part in ordered_parts(explained_folder(out, args)):
        target = folder / part.name
        if target.is_file():
            continue
        if deadline is not None and time.time() > deadline:
            stopped_early = True
            break
        rows = read_part(part, ["source", "error", "class_index", *[map_column(m) for m in args.methods]])
        rows = rows.filter(rows.column("error").is_null())
        sources = rows.column("source").to_pylist()
        images = np.stack([decode_model_input(png[s], s, manifest.input_size, manifest.mean, manifest.std)
                           for s in sources])
        classes = rows.column("class_index").to_numpy().astype(np.int64)
        columns = {"source": sources}
        for method in args.methods:
            scores = road_scores(explainer, images, tensor_maps(rows.column(map_column(method))), classes,
                                 args.road_percentiles)
            tag = method_tag(method)
            columns.update({f"{tag}_road_morf": scores.morf, f"{tag}_road_lerf": scores.lerf,
                            f"{tag}_road_combined": scores.combined})
        pq.write_table(pa.table(columns), target.with_suffix(".tmp"))
        target.with_suffix(".tmp").rename(target)
    done = read_road(out)
    facts = {"seconds": time.perf_counter() - start, "images": 0 if done is None else done.num_rows,
             "percentiles": list(args.road_percentiles), "stopped_at_deadline": stopped_early,
             "deadline_utc": args.road_until}
    previous = phases.done("road") or {}
    facts["seconds_all_runs"] = previous.get("seconds_all_runs", 0.0) + facts["seconds"]
    print(f"road: {facts['images']} images ({facts['seconds']:.0f} s this run"
          f"{', stopped at the deadline' if stopped_early else ''})", flush=True)
    return phases.finish("road", facts)


def read_road(out: Path):
    """Every ROAD row written so far (pyarrow table sorted by source), or None."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((out / ROAD).glob("part-*.parquet"))
    if not files:
        return None
    table = pa.concat_tables([pq.read_table(f) for f in files])
    return table.sort_by("source")
