"""A module-scoped fixture that points FUSIONCAM_CACHE at a fresh folder, so the models a test module's drop-in
classes export land there once per module and never in the user's cache. Import it into a test module or conftest
(`from tests.support.module_cache import cache`) to apply it to every test there."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def cache(tmp_path_factory):
    """FUSIONCAM_CACHE pointed at a fresh folder for the module."""
    patch = pytest.MonkeyPatch()
    patch.setenv("FUSIONCAM_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    patch.undo()
