"""Fixtures of the drop-in's tests: one bundle cache per test module (each model and layer is exported once per
module, never into the user's cache) and the seeded small CNN."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def cache(tmp_path_factory):
    """FUSIONCAM_CACHE pointed at a fresh folder for the module."""
    patch = pytest.MonkeyPatch()
    patch.setenv("FUSIONCAM_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    patch.undo()


@pytest.fixture(scope="module")
def model():
    """tests.support.small_cnn's SmallNet with seed 0, in eval mode."""
    import torch

    from tests.support.small_cnn import SmallNet

    torch.manual_seed(0)
    return SmallNet().eval()
