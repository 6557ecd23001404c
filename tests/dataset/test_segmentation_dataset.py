"""explain-dataset on a segmentation bundle, on a local Ray (2 CPUs, 127.0.0.1, no dashboard): a Parquet table with a
`region` column (none = predicted, all, a box, a relative mask path, an unreadable mask), and a plain folder (every
image for its predicted region). Each row's maps are within 1e-5 of Explainer.explain on the same image with the same
region, its class, region probability and region area equal the explanation's, its metrics equal
metrics.segmentation's, and the row with the unreadable mask is an error row naming it."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: a loopback-only local Ray
ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'fusioncam[dataset]'")
pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed: pip install 'fusioncam[dataset]'")
import pyarrow.parquet as pq  # noqa: E402

import fusioncam  # noqa: E402
from fusioncam.dataset import explain_dataset  # noqa: E402
from fusioncam.dataset.rows import map_column, metric_column, tensor_maps  # noqa: E402
from fusioncam.images import load_batch  # noqa: E402
from fusioncam.metrics.segmentation import evaluate_segmentation_maps  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]  # Ray actors start in each run

SIZE = 24
STEP = 96
METHODS = ("gradcam", "scorecam", "fusion")
NAMES = ["sky", "road", "car"]


def tiny_segmenter() -> torch.nn.Module:
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1)).eval()
    with torch.no_grad():
        model[2].weight.mul_(4.0)
    return model


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("segdata") / "seg.fcam"
    fusioncam.export_torch_segmentation(tiny_segmenter(), "1", out, input_size=(SIZE, SIZE), class_names=NAMES)
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Four PNG photos of other sizes than the model's input, in their own folder, and a mask drawn on the first."""
    folder = tmp_path_factory.mktemp("segphotos")
    paths = []
    for seed in range(4):
        rgb = np.random.default_rng(seed).integers(0, 256, (24 + 4 * seed, 30, 3), dtype=np.uint8)
        path = folder / f"photo{seed}.png"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        paths.append(path)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cv2.circle(mask, (10, 12), 7, 255, -1)
    masks = tmp_path_factory.mktemp("masks")
    cv2.imwrite(str(masks / "disc.png"), mask)
    return folder, paths, masks / "disc.png", mask > 0


def test_region_column_rows_equal_the_explainer_with_the_same_region(bundle, photos, tmp_path):
    folder, paths, mask_path, mask = photos
    table_file = mask_path.parent / "rows.parquet"  # the mask is named relative to the table's folder
    given = [None, "all", "2,3,20,17", mask_path.name]
    regions = ["predicted", "all", (2, 3, 20, 17), mask]
    pq.write_table(pa.table({"path": [str(p) for p in paths], "region": given}), table_file)
    run = explain_dataset(table_file, bundle, out=tmp_path / "out", methods=METHODS, batch_images=3,
                          map_dtype="float32", evaluate=True, step=STEP)
    table = run.table()
    sources = table.column("source").to_pylist()
    assert sorted(sources) == sorted(str(p) for p in paths)
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        for i, path in enumerate(paths):
            row = sources.index(str(path))
            assert table.column("error")[row].as_py() is None
            image = load_batch([path], (SIZE, SIZE))[0]
            want = explainer.explain(image, methods=METHODS, regions=[regions[i]])
            assert table.column("region")[row].as_py() == ["predicted", "all", "2,3,20,17", str(mask_path)][i]
            assert table.column("class_index")[row].as_py() == int(want.classes[0])
            assert table.column("class_name")[row].as_py() == NAMES[int(want.classes[0])]
            assert table.column("probability")[row].as_py() == pytest.approx(float(want.probabilities[0]), abs=1e-6)
            assert table.column("region_area")[row].as_py() == pytest.approx(float(want.region_weights[0].sum()))
            for method in METHODS:
                got = tensor_maps(table.column(map_column(method)))[row]
                np.testing.assert_allclose(got, want.maps[method][0], rtol=0, atol=1e-5, err_msg=f"{path} {method}")
            scores = evaluate_segmentation_maps(explainer, image, want, step=STEP)
            for method in METHODS:
                assert table.column(metric_column(method, "deletion_auc"))[row].as_py() == pytest.approx(
                    float(scores[method].deletion_auc[0]), abs=1e-6)
                assert table.column(metric_column(method, "average_drop"))[row].as_py() == pytest.approx(
                    float(scores[method].average_drop[0]), abs=1e-4)
    assert table.column("region_area")[sources.index(str(paths[2]))].as_py() == pytest.approx(18 * 14)
    assert run.summary["score"] == "region probability"  # what the metrics scored, the task's name for it
    assert "the score is the region probability" in run.markdown


def test_a_folder_explains_every_image_for_its_predicted_region_and_a_bad_region_is_an_error_row(bundle, photos,
                                                                                                tmp_path):
    folder, paths, _, _ = photos
    run = explain_dataset(folder, bundle, out=tmp_path / "out", methods=("gradcam", "fusion"), batch_images=4,
                          map_dtype="float32")
    table = run.table()
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        want = explainer.explain_files(paths, methods=("gradcam", "fusion"))
    assert table.column("source").to_pylist() == [str(p) for p in paths]
    assert table.column("region").to_pylist() == ["predicted"] * len(paths)
    np.testing.assert_allclose(tensor_maps(table.column(map_column("fusion"))), want.maps["fusion"], atol=1e-5)
    assert table.column("class_index").to_pylist() == want.classes.tolist()

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"path": [str(paths[0]), str(paths[1])], "region": ["0,0,40,10", "x-missing.png"]}), bad)
    rows = explain_dataset(bad, bundle, out=tmp_path / "bad-out", methods=("gradcam",), batch_images=2).table()
    errors = dict(zip(rows.column("source").to_pylist(), rows.column("error").to_pylist()))
    assert "outside" in errors[str(paths[0])] and str(paths[0]) in errors[str(paths[0])]
    assert "x-missing.png" in errors[str(paths[1])] and "region mask" in errors[str(paths[1])]
