"""Progress lines of explain-dataset's driver: the line's numbers, how often lines come, and (slow, on a local Ray)
that a run and a resumed run count the images they have left."""

from __future__ import annotations

import os
import re

import cv2
import numpy as np
import pytest

from fusioncam.dataset import run_progress
from fusioncam.dataset.run_progress import counted_rows, progress_line


class _Block:
    def __init__(self, rows: int) -> None:
        self.num_rows = rows


def test_progress_line_numbers():
    assert progress_line(2500, 10000, 100.0) == ("explain-dataset: 2500 of 10000 images (25%), 25.0 images/s, "
                                                 "about 5 min 0 s left")
    assert progress_line(30, 40, 3.0) == "explain-dataset: 30 of 40 images (75%), 10.0 images/s, about 1 s left"
    assert progress_line(40, 40, 4.0) == "explain-dataset: 40 of 40 images (100%), 10.0 images/s"
    assert progress_line(7, None, 2.0) == "explain-dataset: 7 rows, 3.5 rows/s"


def test_counted_rows_lines(monkeypatch):
    lines: list[str] = []
    assert counted_rows([_Block(3), _Block(4), _Block(1)], lines.append, 8, every=0.0) == 8
    assert [re.match(r"explain-dataset: (\d+) of 8", line).group(1) for line in lines] == ["3", "7", "8"]
    lines.clear()
    assert counted_rows([_Block(3), _Block(4)], lines.append, 7, every=3600.0) == 7
    assert len(lines) == 1 and lines[0].startswith("explain-dataset: 7 of 7 images (100%)")  # only the last block's
    lines.clear()
    assert counted_rows([], lines.append, 5) == 0 and lines == []  # nothing to do: no line
    assert counted_rows([_Block(2)], None, 2) == 2  # no notify: just the count


@pytest.mark.slow
def test_a_run_and_its_resume_count_what_they_have_left(tmp_path, monkeypatch):
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'fusioncam[dataset]'")
    from fusioncam.dataset import explain_dataset
    from tests.support.tiny_models import tiny_bundle_at

    (tmp_path / "tiny").mkdir()
    bundle = tiny_bundle_at(tmp_path / "tiny", size=16, classes=3, seed=1)
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    monkeypatch.setattr(run_progress, "PROGRESS_SECONDS", 0.0)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        first: list[str] = []
        explain_dataset([str(folder / f"{i}.png") for i in range(4)], bundle, out=tmp_path / "out",
                        batch_images=2, notify=first.append)
        second: list[str] = []
        explain_dataset(str(folder), bundle, out=tmp_path / "out", batch_images=2, notify=second.append)
    finally:
        ray.shutdown()
    progress = [line for line in first if line.startswith("explain-dataset:")]
    assert [re.match(r"explain-dataset: (\d+) of 4 images", line).group(1) for line in progress] == ["2", "4"]
    resumed = [line for line in second if line.startswith("explain-dataset:")]
    assert resumed and resumed[-1].startswith("explain-dataset: 2 of 2 images (100%)")  # 4 were done already
