"""benchmarks/int8_masked_calibration.py calibrates the INT8 scorer on Score-CAM's masked images: they must be
exactly the rows the float32 explainer's own sweep feeds its scorer (recorded from the scorer backend), not a
re-implementation of the masks that could drift from the runtime's."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fusioncam  # noqa: E402
from benchmarks.int8_masked_calibration import sweep_masked_images  # noqa: E402
from tests.support.small_cnn import SMALL_CHANNELS, SMALL_SIZE, images, small_bundle  # noqa: E402

SIZE = SMALL_SIZE
CHANNELS = SMALL_CHANNELS


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return small_bundle(tmp_path_factory.mktemp("int8-masked"))


def _sweep_rows(bundle, x) -> np.ndarray:
    """Every row the float32 scorer scores while Score-CAM explains x, less the all-zeros image's."""
    explainer = fusioncam.Explainer(bundle, device="cpu")
    backend = explainer.backend
    score_rows, recorded = backend.score_rows, []

    def recording(count, *rest):
        recorded.append(np.array(backend.input_buffer()[:count]))
        return score_rows(count, *rest)

    backend.score_rows = recording
    explainer.explain(x, methods=("scorecam",))
    explainer.close()
    rows = np.concatenate(recorded)
    return rows[np.abs(rows).reshape(len(rows), -1).max(axis=1) > 0]


def test_every_channel_gives_exactly_the_sweeps_rows(bundle):
    x = images(2, SIZE[0], seed=3)
    masked = sweep_masked_images(bundle, x, per_photo=CHANNELS)
    expected = _sweep_rows(bundle, x)
    assert masked.shape == expected.shape and len(masked) > CHANNELS  # both photos, their non-constant channels
    np.testing.assert_array_equal(masked, expected)


def test_a_few_channels_per_photo_are_rows_of_the_sweep(bundle):
    x = images(2, SIZE[0], seed=3)
    masked = sweep_masked_images(bundle, x, per_photo=4, seed=1)
    expected = _sweep_rows(bundle, x).reshape(-1, 3 * SIZE[0] * SIZE[1])
    assert len(masked) == 8
    for row in masked.reshape(len(masked), -1):
        assert (expected == row).all(axis=1).sum() == 1
