"""The summary's mean deletion/insertion curves (summed per part file as arrays) against NumPy means of the rows:
error rows (null curves) left out, a source written in two parts counted once."""

from __future__ import annotations

import numpy as np

from fusioncam.dataset.output import prepare_output, write_part
from fusioncam.dataset.rows import BatchRows, RowLayout, curve_column
from fusioncam.dataset.summary import _mean_curves


def test_mean_curves_equal_numpy_means(tmp_path):
    layout = RowLayout(("gradcam", "fusion"), True, (4, 4))
    rng = np.random.default_rng(3)
    steps = 5
    curves = {f"img{i}": {m: {k: rng.random(steps) for k in ("deletion", "insertion")} for m in layout.methods}
              for i in range(7)}
    out = prepare_output(tmp_path / "out", {"test": True})

    def part(sources, errors=()):
        block = BatchRows(layout)
        for source in sources:
            row = {"source": source, **{curve_column(m, k): curves[source][m][k].tolist()
                                        for m in layout.methods for k in ("deletion", "insertion")}}
            block.add(row, {m: np.zeros((4, 4), np.float32) for m in layout.methods})
        for source in errors:
            block.add({"source": source, "error": "unreadable"})
        write_part(out, block.table())

    part(["img0", "img1", "img2"], errors=["bad"])
    part(["img3", "img4"])
    part(["img4", "img5", "img6"])  # img4 again (a block written twice): counted once
    wanted = {f"img{i}" for i in range(7)} - {"img6"}  # img6 is not among the rows summarised
    got = _mean_curves(out, layout, wanted)
    for method in layout.methods:
        for kind in ("deletion", "insertion"):
            expected = np.mean([curves[s][method][kind] for s in sorted(wanted)], axis=0)
            assert np.allclose(got[method][kind], expected, rtol=0, atol=1e-15)
