"""explain-dataset with --workers equal to Ray's CPU count (the explaining actors hold every CPU): a Parquet
table, a folder and a CSV list are still read and explained. Ray Data's default Parquet reader lists the table's
files in a task that asks for 1 CPU, which never came free, and the run hung; the runs here go in a child process
with a time limit, so a hang fails the test instead of blocking the suite. The maps are compared with
Explainer.explain_files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("ray", reason="Ray is not installed: pip install 'fusioncam[dataset]'")
pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed: pip install 'fusioncam[dataset]'")

import fusioncam  # noqa: E402
from fusioncam.dataset.output import read_results  # noqa: E402
from fusioncam.dataset.rows import map_column, tensor_maps  # noqa: E402
from tests.support.tiny_models import tiny_bundle_at  # noqa: E402

pytestmark = pytest.mark.slow  # a local Ray and three runs of 2 actors in a child process: 40-80 s on 2 busy cores

REPOSITORY = Path(__file__).resolve().parents[2]
LIMIT_S = 240  # a run that finishes takes 15-30 s here; a hung one never ends
METHOD = "gradcam"

RUNS = """
import sys
import ray
from fusioncam.dataset import explain_dataset

bundle, *pairs = sys.argv[1:]
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
assert ray.util.get_node_ip_address() == "127.0.0.1", "the test Ray must listen on the loopback address only"
for source, out in zip(pairs[::2], pairs[1::2]):
    explain_dataset(source, bundle, out=out, methods=("gradcam",), workers=2, batch_images=2, map_dtype="float32")
    print("finished", source, flush=True)
ray.shutdown()
"""


def test_a_parquet_table_a_folder_and_a_csv_list_are_explained_when_the_workers_hold_every_cpu(tmp_path):
    bundle = tiny_bundle_at(tmp_path, size=16, seed=4)
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(5)
    files = []
    for i in range(4):
        files.append(folder / f"photo{i}.png")
        cv2.imwrite(str(files[-1]), rng.integers(0, 255, (21 + i, 19, 3), dtype=np.uint8))
    table = tmp_path / "images.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"name": [p.name for p in files], "image": [p.read_bytes() for p in files]}), table)
    listing = tmp_path / "photos.csv"
    listing.write_text("path\n" + "".join(f"{p}\n" for p in files), encoding="utf-8")

    environment = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}  # a local Ray
    environment.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
                       PYTHONPATH=os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-c", RUNS, str(bundle), str(table), str(tmp_path / "from-table"), str(folder),
               str(tmp_path / "from-folder"), str(listing), str(tmp_path / "from-list")]
    try:
        done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=LIMIT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"explain-dataset did not finish in {LIMIT_S} s with 2 workers on 2 CPUs; it printed:\n"
                    f"{exc.stdout or ''}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("finished") == 3

    with fusioncam.Explainer(bundle, device="cpu") as alone:
        want = alone.explain_files(files, methods=(METHOD,))
    for out, names in ((tmp_path / "from-table", [p.name for p in files]),
                       (tmp_path / "from-folder", [str(p) for p in files]),
                       (tmp_path / "from-list", [str(p) for p in files])):
        rows = read_results(out)
        sources = rows.column("source").to_pylist()
        assert sorted(sources) == sorted(names) and set(rows.column("error").to_pylist()) == {None}
        order = [sources.index(name) for name in names]
        np.testing.assert_allclose(tensor_maps(rows.column(map_column(METHOD)))[order], want.maps[METHOD],
                                   rtol=0, atol=1e-5)
