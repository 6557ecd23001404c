"""A negative target counts from the end, as Python's indexing does (-1 is the last class), on every surface: the
API (targets=-1), the CLI (--target -1) and the server (tests/serve). None or "top" is each image's top class; -1
used to be a hidden "top class" while -2 was out of range."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fusioncam
from fusioncam.cli.main import main
from fusioncam.errors import InputError
from fusioncam.images import load_batch
from tests.support.safety_helpers import CLASS_NAMES, SIZE, tiny_bundle, write_images

CLASSES = len(CLASS_NAMES)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("target"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two images whose top class is not the last one (so -1 and "top" differ)."""
    paths = write_images(tmp_path_factory.mktemp("target-images"), ["a.png", "b.png"], seed=5)
    return paths, load_batch(paths, (SIZE, SIZE))[0]


def test_api_negative_targets_count_from_the_end(bundle, images):
    _, batch = images
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        top = explainer.explain(batch, methods="gradcam")
        assert (top.classes != CLASSES - 1).all()
        assert explainer.explain(batch, targets="top", methods="gradcam").classes.tolist() == top.classes.tolist()
        last = explainer.explain(batch, targets=-1, methods="gradcam")
        assert last.classes.tolist() == [CLASSES - 1] * 2
        explicit = explainer.explain(batch, targets=CLASSES - 1, methods="gradcam")
        np.testing.assert_array_equal(last.maps["gradcam"], explicit.maps["gradcam"])
        mixed = explainer.explain(batch, targets=[None, -CLASSES], methods="gradcam")
        assert mixed.classes.tolist() == [int(top.classes[0]), 0]
        assert explainer.explain(batch, targets=np.array([-2, 1]), methods="gradcam").classes.tolist() == [CLASSES - 2, 1]
        with pytest.raises(InputError, match=rf"target class {-CLASSES - 1} for all images is out of range.*"
                                             rf"-{CLASSES}\.\.-1 counted from the end.*\"top\""):
            explainer.explain(batch, targets=-CLASSES - 1, methods="gradcam")


@pytest.mark.parametrize("given, expected", [("-1", CLASSES - 1), ("-5", 0), ("top", None), ("four", 4)])
def test_cli_target_minus_one_is_the_last_class(bundle, images, tmp_path, given, expected):
    paths, batch = images
    out = tmp_path / "out"
    code = main(["explain", *map(str, paths), "--model", str(bundle), "--out", str(out), "--device", "cpu",
                 "--methods", "gradcam", "--target", given])
    assert code == 0
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        tops = explainer.explain(batch, methods="gradcam").classes.tolist()
    record = json.loads((out / "results.json").read_text())
    assert [image["class_index"] for image in record["images"]] == (tops if expected is None else [expected] * 2)


def test_cli_target_out_of_range_names_both_ranges(bundle, images, tmp_path, capsys):
    paths, _ = images
    code = main(["explain", str(paths[0]), "--model", str(bundle), "--out", str(tmp_path / "o"), "--device", "cpu",
                 "--target", "-6"])
    assert code == 2
    assert "out of range: the model has 5 classes (0..4, or -5..-1 counted from the end)" in capsys.readouterr().err
