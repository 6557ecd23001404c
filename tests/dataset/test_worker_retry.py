"""explain-dataset's worker (in this process, without Ray): a block with one image that fails inside
Explainer.explain (finite pixels whose logits overflow) is explained again image by image (fusioncam.batch_retry),
so only that image becomes an error row, and every other row's map equals Explainer.explain of that image alone."""

from __future__ import annotations

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed: pip install 'fusioncam[dataset]'")

import fusioncam  # noqa: E402
from fusioncam.dataset.rows import RowLayout, map_column, tensor_maps  # noqa: E402
from fusioncam.dataset.worker import ExplainWorker, WorkerSettings  # noqa: E402
from tests.support.tiny_models import tiny_bundle_at  # noqa: E402

SIZE = 16
METHODS = ("gradcam", "gradcam++")


def test_one_failing_image_in_a_block_is_the_only_error_row(tmp_path):
    bundle = tiny_bundle_at(tmp_path, size=SIZE, seed=3)
    rng = np.random.default_rng(11)
    good = {f"img{i}.png": rng.standard_normal((3, SIZE, SIZE)).astype(np.float32) for i in range(3)}
    inputs = dict(good, **{"overflow.png": np.full((3, SIZE, SIZE), 3e38, dtype=np.float32)})
    order = ["img0.png", "overflow.png", "img1.png", "img2.png"]

    worker = ExplainWorker(WorkerSettings(str(bundle), RowLayout(METHODS, False, (SIZE, SIZE), "float32")))
    calls = []
    explain = worker.explainer.explain

    def counted(images, **options):
        calls.append(len(images))
        return explain(images, **options)

    worker.explainer.explain = counted
    worker._model_input = lambda data, name: inputs[name]  # the decoded image of each source, whatever its bytes
    block = pa.table({"source": order, "bytes": [b"x"] * len(order), "error": [None] * len(order)})
    try:
        table = worker(block)
    finally:
        worker.explainer.close()

    assert calls == [4, 1, 1, 1, 1], "the block once, then each image alone"
    errors = table.column("error").to_pylist()
    assert errors[0] is None and errors[2] is None and errors[3] is None
    assert errors[1] is not None and "non-finite" in errors[1]
    assert table.column("batch_images").to_pylist() == [1, None, 1, 1]
    with fusioncam.Explainer(bundle, device="cpu") as alone:
        for row, name in enumerate(order):
            if name not in good:
                assert np.isnan(tensor_maps(table.column(map_column("gradcam")))[row]).all()
                continue
            want = alone.explain(good[name][None], methods=METHODS)
            assert table.column("class_index")[row].as_py() == int(want.classes[0])
            for method in METHODS:
                got = tensor_maps(table.column(map_column(method)))[row]
                np.testing.assert_allclose(got, want.maps[method][0], atol=1e-6)
