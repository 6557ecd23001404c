"""ROAD in explain-dataset: the worker's rows (in this process) hold road_scores' values, the summary their means,
a run on a local Ray gives what `fusioncam evaluate --road` gives, and wrong ROAD settings are clear errors."""

from __future__ import annotations

import csv
import json
import os
import shutil

import cv2
import numpy as np
import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: a loopback-only local Ray
pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed: pip install 'fusioncam[dataset]'")

import fusioncam  # noqa: E402
from fusioncam.cli.main import main  # noqa: E402
from fusioncam.dataset.rows import RowLayout, metric_column  # noqa: E402
from fusioncam.dataset.summary import write_summary  # noqa: E402
from fusioncam.dataset.output import prepare_output, write_part  # noqa: E402
from fusioncam.dataset.worker import ExplainWorker, WorkerSettings  # noqa: E402
from fusioncam.errors import InputError  # noqa: E402
from fusioncam.metrics.road import road_scores  # noqa: E402
from tests.support.tiny_models import tiny_bundle_at  # noqa: E402

SIZE = 16
METHODS = ("gradcam", "fusion")
ROAD = ("road_morf", "road_lerf", "road_combined")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle_at(tmp_path_factory.mktemp("tiny"), size=SIZE, seed=4)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(2)
    for i in range(4):
        cv2.imwrite(str(folder / f"p{i}.png"), rng.integers(0, 256, (20, 18, 3), dtype=np.uint8))
    return folder


def test_worker_rows_and_summary_hold_road_scores(bundle, tmp_path):
    layout = RowLayout(METHODS, True, (SIZE, SIZE), "float32", road_percentiles=(20, 50, 80))
    assert [metric_column("fusion", m) for m in ROAD] == [f"fusion_{m}" for m in ROAD]
    assert all(metric_column(m, r) in layout.schema().names for m in METHODS for r in ROAD)
    assert "fusion_road_morf" not in RowLayout(METHODS, True, (SIZE, SIZE)).schema().names
    rng = np.random.default_rng(4)
    images = {f"i{k}.png": rng.standard_normal((3, SIZE, SIZE)).astype(np.float32) for k in range(3)}
    worker = ExplainWorker(WorkerSettings(str(bundle), layout, step=64))
    worker._model_input = lambda data, name: images[name]
    try:
        table = worker(pa.table({"source": list(images), "bytes": [b"x"] * 3, "error": [None] * 3}))
        batch = np.stack(list(images.values()))
        explanation = worker.explainer.explain(batch, methods=METHODS)
        for method in METHODS:
            want = road_scores(worker.explainer, batch, explanation.maps[method], explanation.classes,
                               percentiles=(20, 50, 80))
            for name, values in zip(ROAD, (want.morf, want.lerf, want.combined)):
                got = np.asarray(table.column(metric_column(method, name)).to_pylist())
                assert np.abs(got - values).max() < 1e-9, (method, name)
    finally:
        worker.explainer.close()
    out = prepare_output(tmp_path / "run", {"road_percentiles": [20, 50, 80]})
    write_part(out, table)
    summary, markdown = write_summary(out, layout, 64, {"model": "tiny"})
    assert summary["road_percentiles"] == [20, 50, 80]
    morf = table.column(metric_column("fusion", "road_morf")).to_numpy()
    assert summary["metrics"]["fusion"]["road_morf"]["mean"] == pytest.approx(float(morf.mean()), rel=1e-12)
    assert "ROAD MoRF ↓" in markdown and "ROAD at percentiles 20, 50, 80" in markdown


def test_road_without_evaluate_and_bad_percentiles_are_refused(bundle, photos, tmp_path, capsys):
    with pytest.raises(InputError, match="evaluate=True"):
        fusioncam.dataset.explain_dataset(photos, bundle, out=tmp_path / "a", road_percentiles=(10, 50))
    with pytest.raises(InputError, match="outside"):
        fusioncam.dataset.explain_dataset(photos, bundle, out=tmp_path / "b", evaluate=True, road_percentiles=(0,))
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'fusioncam[dataset]'")
    code = main(["explain-dataset", str(photos), "--model", str(bundle), "--out", str(tmp_path / "c"), "--road"])
    err = capsys.readouterr().err
    assert code == 2 and "add --evaluate" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


@pytest.mark.slow
def test_explain_dataset_road_equals_fusioncam_evaluate_road(bundle, photos, tmp_path, capsys):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'fusioncam[dataset]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        common = ["--model", str(bundle), "--methods", ",".join(METHODS), "--step", "64", "--road",
                  "--road-percentiles", "25,75"]
        assert main(["explain-dataset", str(photos), "--out", str(tmp_path / "dataset"), "--evaluate",
                     "--batch-images", "3", *common]) == 0
        assert "ROAD combined ↑" in capsys.readouterr().out
        settings = json.loads((tmp_path / "dataset" / "run.json").read_text())
        assert settings["road_percentiles"] == [25, 75]
        assert main(["evaluate", str(photos), "--out", str(tmp_path / "evaluate"), "--device", "cpu", *common]) == 0
        record = json.loads((tmp_path / "evaluate" / "results.json").read_text())
        from fusioncam.dataset.output import read_results

        table = read_results(tmp_path / "dataset")
        assert [os.path.basename(s) for s in table.column("source").to_pylist()] == [i["name"] + ".png"
                                                                                      for i in record["images"]]
        for method in METHODS:
            for name in ROAD:
                got = table.column(metric_column(method, name)).to_numpy()
                want = np.array([image["metrics"][method][name] for image in record["images"]])
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
        ours = {(r["method"], r["metric"]): r for r in csv.DictReader(open(tmp_path / "dataset" / "metrics.csv"))}
        theirs = {(r["method"], r["metric"]): r for r in csv.DictReader(open(tmp_path / "evaluate" / "metrics.csv"))}
        assert ours.keys() == theirs.keys() and ("fusion", "road_combined") in ours
        # a rerun with other ROAD settings is refused, naming them
        capsys.readouterr()
        code = main(["explain-dataset", str(photos), "--out", str(tmp_path / "dataset"), "--evaluate",
                     *common[:-1], "10,90"])
        assert code == 2 and "road_percentiles" in capsys.readouterr().err
    finally:
        ray.shutdown()
        shutil.rmtree(tmp_path / "dataset", ignore_errors=True)
