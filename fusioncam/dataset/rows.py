"""The output table: one row per image, one fixed schema per run (explained rows and error rows alike).

Columns, in order (a method's TAG is its name, `gradcampp` for gradcam++):

- `source` (string): the image's path or URI (or a table row's identity); `error` (string, null when explained)
- `class_index` (int64), `class_name` (string), `probability` (float64): the predicted (top) class, which is the
  class explained, and its softmax probability on the image (a segmentation bundle: the class explained, by
  default the one predicted on most pixels, and its region probability P)
- the task's own columns (tasks/*_payloads.py `dataset_fields`): for a segmentation bundle `region` (string: the
  row's region as given, "predicted" by default) and `region_area` (float64: the sum of the region weights at the
  output resolution); for a detection bundle one row per instance (the default selection: best class score >=
  0.25, class-wise NMS, at most 10 per image) with `instance` (int64: its index within the image), `anchor` (int64)
  and `box` (4 float64: x0, y0, x1, y1 in input pixels), its class and score in class_index, class_name and
  probability; an image with no detection gets one row with instance null and no maps (nor metrics)
- with fusion: `b_den`, `b_reg`, `b_dr`, `b_reg2`, `b0` (float64) and `degenerate` (bool)
- with unioncam: `union_b_den`, `union_b_reg`, `union_b_dr`, `union_b0` (float64) and `union_kept_combined` (bool)
- with a Score-CAM sweep (scorecam, unioncam, fusion): `forwards_run`, `forwards_skipped` (int64)
- `decode_seconds`, `explain_seconds`, `evaluate_seconds` (float64; the batch's seconds shared equally by its
  images), `batch_images` (int64), `worker` (string: host:pid)
- `map_TAG`: each requested method's map, a `[H, W]` tensor (Arrow's fixed_shape_tensor) of float16 (or float32)
- with evaluation: `TAG_average_drop`, `TAG_increase_in_confidence`, `TAG_deletion_auc`, `TAG_insertion_auc`
  (float64), with ROAD also `TAG_road_morf`, `TAG_road_lerf`, `TAG_road_combined` (float64, metrics/road.py),
  and `TAG_deletion_curve`, `TAG_insertion_curve` (list of float64: the class probability per step)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..metrics.evaluation import METRICS, ROAD_METRICS
from ..report.explain_folder import FILE_TAGS
from ..runtime.explanation import BETA_NAMES, UNION_BETA_NAMES

SWEEP_METHODS = ("scorecam", "unioncam", "fusion")
MAP_DTYPES = {"float16": np.float16, "float32": np.float32}


def method_tag(method: str) -> str:
    """How column names spell a method (gradcam++ -> gradcampp)."""
    return FILE_TAGS.get(method, method)


def map_column(method: str) -> str:
    return f"map_{method_tag(method)}"


def metric_column(method: str, metric: str) -> str:
    return f"{method_tag(method)}_{metric}"


def curve_column(method: str, kind: str) -> str:
    return f"{method_tag(method)}_{kind}_curve"


@dataclass(frozen=True)
class RowLayout:
    """What a run's rows hold: the methods, whether they are evaluated, the map size and its storage type."""

    methods: tuple[str, ...]
    evaluate: bool
    map_size: tuple[int, int]
    map_dtype: str = "float16"
    task_fields: tuple = ()  # (name, pyarrow type) pairs of the task's own columns, after `probability`
    road_percentiles: tuple[int, ...] | None = None  # with evaluate: ROAD's percentiles (None: no ROAD columns)

    def metrics(self) -> tuple[str, ...]:
        """The per-image metric columns of each method (with evaluate): METRICS, then ROAD_METRICS with ROAD."""
        return METRICS + ROAD_METRICS if self.road_percentiles is not None else METRICS

    def schema(self):
        """The pyarrow schema every part file of the run has."""
        import pyarrow as pa

        fields = [("source", pa.string()), ("error", pa.string()), ("class_index", pa.int64()),
                  ("class_name", pa.string()), ("probability", pa.float64())]
        fields += list(self.task_fields)
        if "fusion" in self.methods:
            fields += [(name, pa.float64()) for name in BETA_NAMES] + [("degenerate", pa.bool_())]
        if "unioncam" in self.methods:
            fields += [(f"union_{name}", pa.float64()) for name in UNION_BETA_NAMES]
            fields += [("union_kept_combined", pa.bool_())]
        if any(m in SWEEP_METHODS for m in self.methods):
            fields += [("forwards_run", pa.int64()), ("forwards_skipped", pa.int64())]
        fields += [("decode_seconds", pa.float64()), ("explain_seconds", pa.float64()),
                   ("evaluate_seconds", pa.float64()), ("batch_images", pa.int64()), ("worker", pa.string())]
        value_type = pa.float16() if self.map_dtype == "float16" else pa.float32()
        fields += [(map_column(m), pa.fixed_shape_tensor(value_type, list(self.map_size))) for m in self.methods]
        if self.evaluate:
            for method in self.methods:
                fields += [(metric_column(method, metric), pa.float64()) for metric in self.metrics()]
                fields += [(curve_column(method, kind), pa.list_(pa.float64())) for kind in ("deletion", "insertion")]
        return pa.schema(fields)

    def heavy_columns(self) -> list[str]:
        """The columns that stay in the part files (maps and curves), not sent back to the driver."""
        columns = [map_column(m) for m in self.methods]
        if self.evaluate:
            columns += [curve_column(m, kind) for m in self.methods for kind in ("deletion", "insertion")]
        return columns


@dataclass
class BatchRows:
    """Rows of one block being assembled: per column a list of Python values, maps as arrays (None for errors)."""

    layout: RowLayout
    values: dict[str, list] = field(default_factory=dict)
    maps: dict[str, list] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.layout.schema().names:
            (self.maps if name.startswith("map_") else self.values)[name] = []

    def add(self, row: dict[str, object], maps: dict[str, np.ndarray] | None = None) -> None:
        """One row: the given values, null for every other column; `maps` by method (None for an error row)."""
        for name, column in self.values.items():
            column.append(row.get(name))
        for method in self.layout.methods:
            self.maps[map_column(method)].append(None if maps is None else maps[method])

    def table(self):
        """The rows as a pyarrow Table of the layout's schema."""
        import pyarrow as pa

        schema = self.layout.schema()
        columns = []
        for name in schema.names:
            kind = schema.field(name).type
            if name in self.maps:
                columns.append(_tensor_array(self.maps[name], kind, self.layout))
            else:
                columns.append(pa.array(self.values[name], kind))
        return pa.Table.from_arrays(columns, schema=schema)


def _tensor_array(maps: Sequence[np.ndarray | None], kind, layout: RowLayout):
    """A fixed_shape_tensor column from [H, W] maps, null where a map is None, stored in the layout's dtype."""
    import pyarrow as pa

    height, width = layout.map_size
    dtype = MAP_DTYPES[layout.map_dtype]
    flat = np.zeros((len(maps), height * width), dtype=dtype)
    for i, single in enumerate(maps):
        if single is not None:
            flat[i] = np.asarray(single, dtype=np.float32).reshape(-1).astype(dtype)
    missing = np.array([single is None for single in maps], dtype=bool)
    storage = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), height * width,
                                                mask=pa.array(missing) if missing.any() else None)
    return pa.ExtensionArray.from_storage(kind, storage)


def tensor_maps(column) -> np.ndarray:
    """A map column of a read table as float32 [N, H, W] (NaN for the null rows of errors)."""
    import pyarrow as pa

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    shape = list(column.type.shape)
    size = int(np.prod(shape))
    arrays = []
    for chunk in chunks:
        storage = chunk.storage
        child = storage.values.slice(storage.offset * size, len(chunk) * size).fill_null(0)
        flat = child.to_numpy(zero_copy_only=False).astype(np.float32)
        values = flat.reshape(len(chunk), *shape) if len(chunk) else np.zeros((0, *shape), np.float32)
        if chunk.null_count:
            values[np.asarray(chunk.is_null())] = np.nan
        arrays.append(values)
    return np.concatenate(arrays) if arrays else np.zeros((0, *shape), np.float32)
