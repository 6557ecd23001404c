"""The Fashion-MNIST study's pieces on synthetic IDX files written here (no Debian package needed): the IDX reader
against known bytes, the PNG table, the bundle's preprocessing and probabilities against the trained PyTorch model,
the map correlation, and (slow) the whole study end to end on 8 images with a 1-epoch model."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from benchmarks.faithfulness import fashion_mnist_data as data
from benchmarks.faithfulness.fashion_mnist_variants import pearson_rows


def _idx(values: np.ndarray, kind: int) -> bytes:
    header = bytes([0, 0, kind, values.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in values.shape)
    return header + values.astype(values.dtype.newbyteorder(">") if values.dtype.itemsize > 1 else values.dtype).tobytes()


def test_read_idx_known_bytes():
    raw = bytes([0, 0, 0x08, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3, 1, 2, 3, 250, 251, 252])
    got = data.read_idx(raw)
    assert got.dtype == np.uint8 and got.shape == (2, 1, 3)
    assert got.tolist() == [[[1, 2, 3]], [[250, 251, 252]]]
    assert np.array_equal(data.read_idx(gzip.compress(raw)), got)  # gzip is seen and undone
    ints = bytes([0, 0, 0x0C, 1, 0, 0, 0, 2]) + (-2).to_bytes(4, "big", signed=True) + (70000).to_bytes(4, "big")
    assert data.read_idx(ints).tolist() == [-2, 70000]  # big-endian int32


@pytest.mark.parametrize("raw, words", [(b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "two zero bytes"),
                                        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "unknown IDX value type 0x07"),
                                        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated"),
                                        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x05", "1 value bytes for shape (3,)")])
def test_read_idx_refuses_bad_bytes(raw, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        data.read_idx(raw, "x.idx")


def synthetic_fashion(folder, train: int = 64, test: int = 16, seed: int = 0):
    """IDX files with learnable classes: class c is a bright bar at column 2c (plus noise)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = rng.integers(0, 60, (count, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 4:24, 2 * c + 2:2 * c + 6] = 230
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images, 0x08)))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels, 0x08)))
    return folder


def test_load_split_and_png_table(tmp_path):
    import cv2
    import pyarrow.parquet as pq

    synthetic_fashion(tmp_path)
    split = data.load_split("t10k", tmp_path)
    assert split.images.shape == (16, 28, 28) and split.labels.dtype == np.int64
    path = data.write_test_table(split, tmp_path / "t.parquet", 5)
    table = pq.read_table(path)
    assert table.column("id").to_pylist() == [f"test-{i:05d}" for i in range(5)]
    assert table.column("label").to_pylist() == split.labels[:5].tolist()
    for raw, image in zip(table.column("image").to_pylist(), split.images):
        decoded = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded.ndim == 2 and np.array_equal(decoded, image)  # grey, lossless


def test_missing_data_names_the_package(tmp_path):
    with pytest.raises(data.DataMissing, match="apt-get install dataset-fashion-mnist"):
        data.load_split("t10k", tmp_path)


def test_study_exits_with_one_line_without_data(tmp_path, capsys):
    from benchmarks.faithfulness.fashion_mnist import main

    assert main(["--data", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "apt-get install dataset-fashion-mnist" in err[0]


def test_pearson_rows_matches_numpy():
    rng = np.random.default_rng(1)
    a, b = rng.random((4, 5, 6)), rng.random((4, 5, 6))
    b[1] = a[1] * 3 + 1
    expected = [np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)]
    assert np.allclose(pearson_rows(a, b), expected, atol=1e-12)
    a[2] = 0.5
    assert np.isnan(pearson_rows(a, b)[2])


@pytest.mark.slow  # training and export: about 7 s on the busy 2-core machine
def test_bundle_reads_grey_png_as_the_model_was_trained(tmp_path):
    """The exported bundle decodes the study's grey PNG bytes into the trained model's input, and its probabilities
    equal the PyTorch model's softmax on the training-time normalisation."""
    import torch

    from benchmarks.faithfulness import fashion_mnist_model as fm
    from fusioncam import Explainer
    from fusioncam.images import decode_model_input

    synthetic_fashion(tmp_path)
    train, test = data.load_split("train", tmp_path), data.load_split("t10k", tmp_path)
    trained = fm.train(train.images, train.labels, epochs=1, seed=0, batch=32, log=lambda _: None)
    bundle = fm.export_bundle(trained, tmp_path / "bundle", data.CLASS_NAMES)
    explainer = Explainer(bundle, device="cpu")
    manifest = explainer.bundle.manifest
    images = test.images[:6]
    decoded = np.stack([decode_model_input(data.png_bytes(g), "x.png", manifest.input_size, manifest.mean,
                                           manifest.std) for g in images])
    expected_input = trained.norm.apply(images)
    assert np.allclose(decoded, expected_input, atol=1e-6)
    with torch.no_grad():
        reference = torch.softmax(trained.model(torch.from_numpy(expected_input)), dim=1).numpy()
    assert np.allclose(explainer.predict(decoded).probabilities, reference, atol=1e-5)


@pytest.mark.slow
def test_study_end_to_end_on_eight_images(tmp_path):
    """The whole study (train, export, explain-dataset on Ray with --evaluate and --road, variants, summary) on 8
    synthetic images: the committed per-image metrics equal evaluate_maps of the same images in this process."""
    import pyarrow.parquet as pq

    from benchmarks.faithfulness.fashion_mnist import BUNDLE, main
    from benchmarks.faithfulness.fashion_mnist_variants import decoded_images
    from fusioncam import Explainer
    from fusioncam.metrics.evaluation import evaluate_maps

    synthetic_fashion(tmp_path)
    out, results = tmp_path / "study", tmp_path / "results"
    assert main(["--data", str(tmp_path), "--out", str(out), "--images", "8", "--epochs", "1", "--methods",
                 "gradcam,fusion", "--step", "112", "--road-percentiles", "20,80", "--variant-images", "4",
                 "--batch-images", "4", "--resamples", "200", "--results", str(results), "--stem", "fm"]) == 0
    report = json.loads((results / "fm.json").read_text())
    assert report["images"] == 8 and report["tables"]["images"] == 8
    per_image = pq.read_table(out / "fm-per-image.parquet").to_pydict()
    explainer = Explainer(out / BUNDLE, device="cpu")
    ids, images, labels = decoded_images(out / "test-images.parquet", 8, explainer.bundle.manifest)
    assert per_image["id"] == ids and per_image["label"] == labels.tolist()
    explanation = explainer.explain(images, methods=("gradcam", "fusion"))
    assert per_image["class_index"] == explanation.classes.tolist()
    scored = evaluate_maps(explainer, images, explanation.maps, step=112, explanation=explanation,
                           road_percentiles=(20, 80))
    for method, tag in (("gradcam", "gradcam"), ("fusion", "fusion")):
        for metric, values in scored.scores[method].per_image.items():
            assert np.allclose(per_image[f"{tag}_{metric}"], values, rtol=1e-4, atol=1e-4), (method, metric)
    correct = np.mean(np.array(per_image["class_index"]) == labels)
    assert report["bundle_predictions_correct"]["share"] == pytest.approx(correct)
    assert report["variants"]["images"] == 4 and -1 <= report["variants"]["variants"]["fast8"]["pearson"]["min"] <= 1
    # a rerun reuses every finished phase (the explain step is not run again)
    assert main(["--data", str(tmp_path), "--out", str(out), "--images", "8", "--epochs", "1", "--methods",
                 "gradcam,fusion", "--step", "112", "--road-percentiles", "20,80", "--variant-images", "4",
                 "--batch-images", "4", "--resamples", "200", "--results", str(results), "--stem", "fm"]) == 0
