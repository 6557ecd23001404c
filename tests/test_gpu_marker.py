"""The `gpu` marker of tests/conftest.py: a marked test is skipped with the reason where CUDA cannot be used."""

from __future__ import annotations

import pytest

from fusioncam.runtime.device_select import cuda_unavailable_reason

REASON = cuda_unavailable_reason()


@pytest.mark.gpu
def test_marked_tests_run_only_with_a_usable_gpu():
    """Reached only where CUDA is usable: the marker skipped it everywhere else."""
    assert REASON is None


def test_the_marker_skips_with_the_reason(request):
    item = request.node.session.items
    marked = next(i for i in item if i.name == "test_marked_tests_run_only_with_a_usable_gpu")
    skips = [m for m in marked.iter_markers("skip")]
    if REASON is None:
        assert skips == []
    else:
        assert [m.kwargs["reason"] for m in skips] == [f"needs a CUDA GPU: {REASON}"]
