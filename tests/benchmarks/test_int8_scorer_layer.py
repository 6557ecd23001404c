"""benchmarks/int8_scorer.py's `--layer MODEL=LAYER`: a malformed or impossible request is refused by the parser with
the reason, before any model is built or exported (a long benchmark must not start on a typo)."""

import pytest

from benchmarks.int8_scorer import HEAD_RELU6, main, markdown


@pytest.mark.parametrize("item, words", [
    ("resnet50=" + HEAD_RELU6, "EfficientNet-Lite0's conv-head ReLU6 output"),
    ("vgg16=features", "MODEL one of efficientnet_lite0, resnet50"),
    ("efficientnet_lite0=", "MODEL=LAYER"),
])
def test_bad_layer_requests_are_refused_with_the_reason(item, words, capsys, tmp_path):
    with pytest.raises(SystemExit) as stopped:
        main(["--layer", item, "--out", str(tmp_path), "--work", str(tmp_path)])
    assert stopped.value.code == 2
    assert words in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing exported, nothing written


def test_markdown_states_the_load_range_it_was_measured_under():
    row = {"model": "m", "layer": "l", "weights": "w", "channels": 3, "int8_settings": "s",
           "scorer_images_per_s": {"fp32": 1.0, "int8": 2.0}, "scorer_speedup": 2.0,
           "logits_on_photos": {"max_relative_difference": 0.1, "top1_agreement": 1.0},
           "load_average_1min": [3.25, 1.5, 7.0]}
    report = {"machine_record": {"cpu_model": "c", "cpu_cores": 2, "recorded_at": "t"}, "images": ["a"],
              "models": [row]}
    assert "1-minute load average before and after each image: 1.5 to 7.0" in markdown(report)


PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "motorcycle"]


def test_photos_are_chosen_by_name_or_index_in_the_order_given():
    from benchmarks.int8_scorer import chosen_photos

    assert chosen_photos("coffee,3, 4", PHOTOS) == ["coffee", "rocket", "motorcycle"]
    assert chosen_photos("motorcycle,0", PHOTOS) == ["motorcycle", "astronaut"]


@pytest.mark.parametrize("photos, words", [
    ("coffee,bike", "'bike' is not a sample photo; give names or indices 0-4 of astronaut, chelsea"),
    ("5", "'5' is not a sample photo"),
    ("coffee,2", "'coffee' is given twice"),
])
def test_bad_photo_requests_are_refused_with_the_reason(photos, words, capsys, tmp_path):
    work = tmp_path / "work"
    with pytest.raises(SystemExit) as stopped:
        main(["--photos", photos, "--out", str(tmp_path), "--work", str(work)])
    assert stopped.value.code == 2
    assert words in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # no work folder made, nothing written


def test_photos_and_images_are_not_taken_together(capsys, tmp_path):
    with pytest.raises(SystemExit) as stopped:
        main(["--photos", "coffee", "--images", "2", "--out", str(tmp_path), "--work", str(tmp_path)])
    assert stopped.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
