"""Fixtures of the drop-in's tests: one bundle cache per test module (each model and layer is exported once per
module, never into the user's cache) and the seeded small CNN."""

from __future__ import annotations

import pytest

from tests.support.module_cache import cache  # noqa: F401 (autouse: each module's own bundle cache)


@pytest.fixture(scope="module")
def model():
    """tests.support.small_cnn's SmallNet with seed 0, in eval mode."""
    import torch

    from tests.support.small_cnn import SmallNet

    torch.manual_seed(0)
    return SmallNet().eval()
