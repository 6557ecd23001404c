"""The faithfulness study tables: cells, intervals, directions and the bold best mean, against hand-computed values."""

import json

import numpy as np
import pytest

from benchmarks.faithfulness.tables import METRIC_COLUMNS, faithfulness_tables
from fusioncam.errors import InputError


def _rows(table: str) -> dict[str, list[str]]:
    """Markdown table -> {first cell: other cells} (header included, separator dropped)."""
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] != "---":
            rows[cells[0]] = cells[1:]
    return rows


def test_constant_values_give_a_point_interval_and_the_direction_picks_the_bold_cell():
    # Average Drop: lower is better -> Fusion-CAM (1.0) is bold; insertion: higher is better -> Grad-CAM (0.5) bold.
    per_method = {
        "gradcam": {"average_drop": np.full(3, 4.0), "insertion_auc": np.full(3, 0.5)},
        "fusion": {"average_drop": np.full(3, 1.0), "insertion_auc": np.full(3, 0.25)},
    }
    tables = faithfulness_tables(per_method, resamples=200)
    rows = _rows(tables.method_table)
    assert rows["method"] == ["Average Drop (%) ↓", "Insertion AUC ↑"]
    assert rows["Grad-CAM"] == ["4.00 [4.00, 4.00]", "**0.5000 [0.5000, 0.5000]**"]
    assert rows["Fusion-CAM"] == ["**1.00 [1.00, 1.00]**", "0.2500 [0.2500, 0.2500]"]
    # Fusion-CAM minus Grad-CAM: -3 on every image (better: lower), -0.25 on every image (worse: higher wins).
    paired = _rows(tables.paired_table)
    assert paired["Fusion-CAM minus"] == ["Average Drop (%) ↓", "Insertion AUC ↑"]
    assert paired["Grad-CAM"] == ["-3.00 [-3.00, -3.00] ✓; 3 / 0 of 3", "-0.2500 [-0.2500, -0.2500] ✓; 0 / 3 of 3"]


def test_two_point_bootstrap_interval_and_win_counts():
    # values [0, 1]: a resampled mean is 0, 0.5 or 1 with chances 1/4, 1/2, 1/4, so with 10,000 resamples the
    # 2.5th and 97.5th percentiles are 0 and 1 (fewer than 250 of either in
    # 10,000 draws is practically impossible; the seed is fixed besides).
    per_method = {
        "fusion": {"deletion_auc": np.array([0.0, 1.0]), "road_combined": np.array([0.3, 0.1])},
        "scorecam": {"deletion_auc": np.array([1.0, 1.0]), "road_combined": np.array([0.1, 0.1])},
        "gradcam": {"deletion_auc": np.array([0.0, 1.0]), "road_combined": np.array([0.2, 0.2])},
    }
    tables = faithfulness_tables(per_method, resamples=10_000)
    rows = _rows(tables.method_table)
    assert rows["method"] == ["Deletion AUC ↓", "ROAD combined ↑"]
    # deletion: Fusion-CAM and Grad-CAM tie at 0.5 -> both bold; ROAD combined: Fusion-CAM 0.2 = Grad-CAM 0.2.
    assert rows["Fusion-CAM"] == ["**0.5000 [0.0000, 1.0000]**", "**0.2000 [0.1000, 0.3000]**"]
    assert rows["Grad-CAM"] == ["**0.5000 [0.0000, 1.0000]**", "**0.2000 [0.2000, 0.2000]**"]
    assert rows["Score-CAM"] == ["1.0000 [1.0000, 1.0000]", "0.1000 [0.1000, 0.1000]"]
    paired = _rows(tables.paired_table)
    # deletion, Fusion-CAM minus Score-CAM: differences [-1, 0] -> mean -0.5, interval [-1, 0], which touches 0:
    # no mark; Fusion-CAM better on 1 image, tied on the other.
    assert paired["Score-CAM"][0] == "-0.5000 [-1.0000, 0.0000]; 1 / 0 of 2"
    # ROAD combined minus Score-CAM: [0.2, 0.0] -> 0.1 [0.0, 0.2], better on 1 image.
    assert paired["Score-CAM"][1] == "0.1000 [0.0000, 0.2000]; 1 / 0 of 2"
    # minus Grad-CAM: deletion equal on both images; ROAD combined [0.1, -0.1] -> 0 [-0.1, 0.1], 1 / 1.
    assert paired["Grad-CAM"] == ["0.0000 [0.0000, 0.0000]; 0 / 0 of 2", "0.0000 [-0.1000, 0.1000]; 1 / 1 of 2"]
    record = json.loads(json.dumps(tables.record))  # JSON-able
    assert record["images"] == 2
    assert record["best"] == {"deletion_auc": ["fusion", "gradcam"], "road_combined": ["fusion", "gradcam"]}
    assert record["methods"]["fusion"]["deletion_auc"]["low"] == 0.0
    assert record["methods"]["fusion"]["deletion_auc"]["high"] == 1.0
    against = record["paired"]["against"]["scorecam"]["deletion_auc"]
    assert against["a_better"] == 1 and against["b_better"] == 0 and against["separates"] is False
    assert against["difference"]["mean"] == -0.5


def test_every_direction_and_column_order():
    per_method = {"fusion": {m: np.arange(4.0) for m in reversed(list(METRIC_COLUMNS))}}
    tables = faithfulness_tables(per_method, resamples=50)
    assert _rows(tables.method_table)["method"] == [
        "Average Drop (%) ↓", "Increase in Confidence (%) ↑", "Deletion AUC ↓", "Insertion AUC ↑", "ROAD MoRF ↓",
        "ROAD LeRF ↑", "ROAD combined ↑"]
    assert tables.paired_table == "" and tables.record["paired"] is None


def test_nan_rows_are_dropped_from_the_mean():
    per_method = {"fusion": {"average_drop": np.array([2.0, np.nan, 4.0])},
                  "gradcam": {"average_drop": np.array([1.0, 5.0, np.nan])}}
    tables = faithfulness_tables(per_method, resamples=100)
    rows = _rows(tables.method_table)
    # both means are 3 over their two values (a tie: both bold); each interval spans the two values
    assert rows["Fusion-CAM"][0] == "**3.00 [2.00, 4.00]**"
    assert rows["Grad-CAM"][0] == "**3.00 [1.00, 5.00]**"
    # paired: only image 0 has both -> 2 - 1 = 1, worse for Fusion-CAM (lower is better)
    assert _rows(tables.paired_table)["Grad-CAM"][0] == "1.00 [1.00, 1.00] ✓; 0 / 1 of 1"


@pytest.mark.parametrize("per_method, message", [
    ({}, "per_method is empty"),
    ({"fusion": {"accuracy": np.ones(2)}}, "unknown metric"),
    ({"fusion": {"average_drop": np.ones(2)}, "gradcam": {"deletion_auc": np.ones(2)}}, "the same metrics"),
    ({"fusion": {"average_drop": np.ones(2)}, "gradcam": {"average_drop": np.ones(3)}}, "one value per image"),
])
def test_bad_input_is_refused_by_name(per_method, message):
    with pytest.raises(InputError, match=message):
        faithfulness_tables(per_method, resamples=10)
