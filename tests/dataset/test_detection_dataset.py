"""explain-dataset on a detection bundle (a TinyYolo written as a plain ONNX file in the Ultralytics layout), on a
local Ray (2 CPUs, 127.0.0.1, no dashboard, one worker): one row per instance (source, instance, anchor, box, class,
score), each row's maps within 1e-5 of Explainer.explain on the same image with the same selection; an image without
detection is one row without maps; --evaluate is refused by name for detection bundles, instances= for others."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: a loopback-only local Ray
ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'fusioncam[dataset]'")
pytest.importorskip("pyarrow", reason="pyarrow is not installed: pip install 'fusioncam[dataset]'")

import fusioncam  # noqa: E402
from fusioncam.dataset import explain_dataset  # noqa: E402
from fusioncam.dataset.rows import map_column, metric_column, tensor_maps  # noqa: E402
from fusioncam.errors import InputError  # noqa: E402
from fusioncam.export.detection_export import export_onnx_detection  # noqa: E402
from fusioncam.images import load_batch  # noqa: E402
from fusioncam.metrics.detection import evaluate_detection_maps  # noqa: E402
from fusioncam.tasks.detection import InstanceSelection  # noqa: E402
from tests.support.detection_models import TARGET_TENSOR, TinyYolo, export_tiny_yolo  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]  # Ray actors start in each run

METHODS = ("gradcam", "fusion")
NAMES = ["person", "bike", "car"]
FIELDS = {"average_drop": "average_drop", "increase_in_confidence": "increase", "deletion_auc": "deletion_auc",
          "insertion_auc": "insertion_auc"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("detdata")
    export_tiny_yolo(TinyYolo().eval(), folder / "model.onnx")
    export_onnx_detection(folder / "model.onnx", folder / "det.fcam", TARGET_TENSOR, layout="yolov8",
                          class_names=NAMES)
    return folder / "det.fcam"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("detphotos")
    paths = []
    for seed in range(3):
        small = np.random.default_rng(40 + seed).integers(0, 256, (10, 12, 3), dtype=np.uint8)
        photo = cv2.resize(small, (96, 80 + 8 * seed), interpolation=cv2.INTER_CUBIC)
        paths.append(folder / f"photo{seed}.png")
        cv2.imwrite(str(paths[-1]), photo)
    return folder, paths


def test_one_row_per_instance_equal_to_the_explainer(bundle, photos, tmp_path):
    folder, paths = photos
    selection = InstanceSelection(min_score=0.3, max_instances=4)
    run = explain_dataset(folder, bundle, out=tmp_path / "out", methods=METHODS, batch_images=2, workers=1,
                          map_dtype="float32", instances=selection, evaluate=True, step=512)
    table = run.table()
    sources = table.column("source").to_pylist()
    instances = table.column("instance").to_pylist()
    assert table.column("error").null_count == table.num_rows
    maps = {m: tensor_maps(table.column(map_column(m))) for m in METHODS}
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        manifest = explainer.bundle.manifest
        for path in paths:
            image = load_batch([path], manifest.input_size, manifest.mean, manifest.std)[0]
            want = explainer.explain(image, methods=METHODS, instances=selection)
            scores = evaluate_detection_maps(explainer, image, want, step=512)
            rows = [i for i, s in enumerate(sources) if s == str(path)]
            assert len(rows) == len(want.classes) == 4
            assert [instances[i] for i in rows] == list(range(len(rows)))
            for k, row in enumerate(rows):
                assert table.column("anchor")[row].as_py() == int(want.anchors[k])
                assert table.column("class_index")[row].as_py() == int(want.classes[k])
                assert table.column("class_name")[row].as_py() == NAMES[int(want.classes[k])]
                assert table.column("probability")[row].as_py() == pytest.approx(float(want.probabilities[k]),
                                                                                   abs=1e-6)
                np.testing.assert_allclose(table.column("box")[row].as_py(), want.boxes[k], atol=1e-4)
                for method in METHODS:
                    np.testing.assert_allclose(maps[method][row], want.maps[method][k], atol=1e-5,
                                               err_msg=f"{path.name} instance {k} {method}")
                    for metric, field in FIELDS.items():
                        assert table.column(metric_column(method, metric))[row].as_py() == pytest.approx(
                            float(getattr(scores[method], field)[k]), abs=1e-4), (path.name, k, method, metric)
    summary = run.summary
    assert summary["metrics"]["fusion"]["deletion_auc"]["n"] == 12  # every instance row, once


def test_instances_are_refused_for_classifiers(photos, tmp_path):
    from tests.support.tiny_models import tiny_bundle_at

    folder, _ = photos
    (tmp_path / "clf").mkdir()
    classifier = tiny_bundle_at(tmp_path / "clf", size=24, seed=1)
    with pytest.raises(InputError, match="apply to detection bundles only"):
        explain_dataset(folder, classifier, out=tmp_path / "out2", methods=METHODS, workers=1,
                        instances=InstanceSelection())


def test_an_image_without_detection_is_one_row_without_maps(bundle, photos):
    """The worker itself (no Ray actor): with a selection no detection passes, each image is one row, not an error,
    with instance, class and maps null."""
    import pyarrow as pa

    from fusioncam.dataset.rows import RowLayout
    from fusioncam.dataset.worker import ExplainWorker, WorkerSettings
    from fusioncam.tasks.payloads import payloads_for

    _, paths = photos
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        fields = tuple(payloads_for(explainer.bundle.manifest).dataset_fields())
    worker = ExplainWorker(WorkerSettings(str(bundle), RowLayout(METHODS, False, (64, 64), "float32", fields)))
    worker.payloads = type(worker.payloads)()  # this worker's own payloads object, changed below
    worker.payloads.dataset_instances = lambda: InstanceSelection(min_score=1.0)
    block = pa.table({"source": [str(p) for p in paths[:2]], "bytes": [p.read_bytes() for p in paths[:2]],
                      "error": [None, None]})
    try:
        table = worker(block)
    finally:
        worker.explainer.close()
    assert table.num_rows == 2
    assert table.column("error").to_pylist() == [None, None]
    assert table.column("instance").to_pylist() == [None, None]
    assert table.column("class_index").to_pylist() == [None, None]
    assert np.isnan(tensor_maps(table.column(map_column("fusion")))).all()
