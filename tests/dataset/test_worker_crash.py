"""An image that kills the worker process every time it is decoded: the run still ends, the image is an error row
that says so, and every other image (also those that shared its block) is explained as by a single process."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: a loopback-only local Ray
ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'fusioncam[dataset]'")
pytest.importorskip("pyarrow", reason="pyarrow is not installed: pip install 'fusioncam[dataset]'")

import fusioncam  # noqa: E402
from fusioncam.dataset import explain_dataset  # noqa: E402
from fusioncam.dataset.rows import tensor_maps  # noqa: E402
from tests.support.crashing_decoder import CRASH_MARK  # noqa: E402
from tests.support.tiny_models import tiny_bundle_at  # noqa: E402

pytestmark = pytest.mark.slow  # the crashing block, then its images alone, each kill a worker that Ray restarts

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def crashing_ray():
    """A local Ray (2 CPUs, 127.0.0.1, no dashboard) whose workers die on marked files; shut down afterwards."""
    if ray.is_initialized():
        ray.shutdown()
    hook = {"worker_process_setup_hook": "tests.support.crashing_decoder.install",
            "env_vars": {"PYTHONPATH": str(REPOSITORY)}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False, runtime_env=hook)
    assert ray.util.get_node_ip_address() == "127.0.0.1", "the test Ray must listen on the loopback address only"
    yield
    ray.shutdown()


def test_an_image_that_kills_its_worker_every_time_becomes_an_error_row(tmp_path):
    (tmp_path / "tiny").mkdir()
    bundle = tiny_bundle_at(tmp_path / "tiny", size=16, classes=5, seed=4)
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(3)
    good = []
    for name in ("a.png", "b.png", "d.png"):
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
        good.append(folder / name)
    crash = folder / "c.png"  # in the block of b.png (blocks of 2 in path order: a b | c d)
    crash.write_bytes(CRASH_MARK + bytes(100))

    run = explain_dataset(folder, bundle, out=tmp_path / "out", batch_images=2, map_dtype="float32", crash_retries=0)

    table = run.table()
    sources = table.column("source").to_pylist()
    assert sources == sorted(str(p) for p in [*good, crash])
    errors = dict(zip(sources, table.column("error").to_pylist()))
    message = errors.pop(str(crash))
    assert "worker process died" in message and "its only attempt" in message
    assert set(errors.values()) == {None}
    assert run.summary["errors"] == 1 and run.summary["run"]["crashed_workers"] == [str(crash)]
    want = fusioncam.Explainer(bundle, device="cpu").explain_files(good)
    rows = [sources.index(str(p)) for p in good]
    np.testing.assert_allclose(tensor_maps(table.column("map_fusion"))[rows], want.maps["fusion"], rtol=0, atol=1e-5)

    # A rerun resumes: nothing is left to do, the crash is not retried, the table is unchanged.
    again = explain_dataset(folder, bundle, out=tmp_path / "out", batch_images=2, map_dtype="float32")
    assert again.summary["run"]["images_this_run"] == 0 and again.table().column("source").to_pylist() == sources
