"""`fusioncam demo` end to end on the CPU with the real EfficientNet-Lite0: a cat, explained on its head."""

import json

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("skimage")

from fusioncam.cli.main import main  # noqa: E402
from fusioncam.report.pictures import PanelLayout, tile_size  # noqa: E402

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
# The cat's head in the 224x224 model input (chelsea resized whole, no crop), measured once by eye:
# ears at the top edge (x ~15-45 and ~165-195), eyes around y ~90, nose ~y 180, chin ~y 200.
# Outside it: the blurred background on the right (x > 185) and the chest and whiskers below y 200.
HEAD_BOX = (slice(0, 200), slice(20, 185))  # (rows y, columns x)
CHELSEA_HW = (300, 451)


@pytest.mark.slow
def test_demo_explains_chelsea_as_a_cat_looking_at_its_head(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FUSIONCAM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--images", "chelsea", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr()

    names = {"chelsea_overlay.png", "chelsea_fusion.npy", "chelsea_panel.png", "index.html", "results.json"}
    assert {p.name for p in out.iterdir()} == names  # no temporary files left behind either
    assert any((tmp_path / "cache" / "bundles").iterdir())  # the export went to FUSIONCAM_CACHE

    results = json.loads((out / "results.json").read_text())
    (record,) = results["images"]
    assert record["class_index"] in CAT_CLASSES
    assert 0.0 < record["probability"] <= 1.0 and record["degenerate"] is False
    assert set(record["betas"]) == {"b_den", "b_reg", "b_dr", "b_reg2", "b0"}

    fusion = np.load(out / "chelsea_fusion.npy")
    assert fusion.dtype == np.float32 and fusion.shape == (224, 224)
    assert fusion.min() >= 0.0 and fusion.max() == pytest.approx(1.0)
    stats = record["fusion_stats"]
    assert stats["mean"] == pytest.approx(float(fusion.mean()), abs=1e-6)
    assert tuple(stats["peak_yx"]) == np.unravel_index(int(np.argmax(fusion)), fusion.shape)

    inside = np.zeros(fusion.shape, dtype=bool)
    inside[HEAD_BOX] = True
    assert fusion[inside].mean() > fusion[~inside].mean() + 0.1

    assert cv2.imread(str(out / "chelsea_overlay.png")).shape == (*CHELSEA_HW, 3)
    panel = cv2.imread(str(out / "chelsea_panel.png"))
    assert panel.shape[:2] == PanelLayout(*tile_size(CHELSEA_HW), 4).size

    page = (out / "index.html").read_text()
    assert 'src="chelsea_panel.png"' in page and record["class_name"] in page
    assert "chelsea" in printed.out and record["class_name"] in printed.out
