"""Cutting rows into scorer runs: every row once, in order, and a fixed-shape plan pads fewer than 8 rows."""

import pytest

from fusioncam.runtime.batch_plan import SMALLEST_PADDED_RUN, padded_rows, padded_run_sizes, row_ranges


def covers_in_order(ranges, total):
    return [row for start, stop in ranges for row in range(start, stop)] == list(range(total))


@pytest.mark.parametrize("batch_size", [1, 3, 8, 12, 37, 64, 100, 256])
def test_every_row_once_in_order_and_padding_bounded(batch_size):
    for total in range(0, 3 * batch_size + 20):
        for padded in (False, True):
            ranges = row_ranges(total, batch_size, padded)
            assert covers_in_order(ranges, total), (total, padded)
            assert all(0 < stop - start <= batch_size for start, stop in ranges)
        padding = sum(padded_rows(stop - start, batch_size) - (stop - start)
                      for start, stop in row_ranges(total, batch_size, padded=True))
        assert padding < SMALLEST_PADDED_RUN, (total, batch_size, padding)


def test_unpadded_plan_is_full_batches_then_one_remainder():
    assert row_ranges(323, 16, padded=False) == [(i, i + 16) for i in range(0, 320, 16)] + [(320, 323)]
    assert row_ranges(0, 16, padded=False) == []


def test_padded_plan_for_resnet50_layer4_and_fusion_probe_rounds():
    """1958 non-constant channels of 2048 at batch 256, then Fusion-CAM's probe rounds of 2 rows and 1 row."""
    sizes = [stop - start for start, stop in row_ranges(1958, 256, padded=True)]
    assert sizes == [256] * 7 + [128, 32, 6]
    assert [padded_rows(size, 256) for size in sizes] == [256] * 7 + [128, 32, 8]
    assert row_ranges(2, 256, padded=True) == [(0, 2)] and padded_rows(2, 256) == 8
    assert [stop - start for start, stop in row_ranges(250, 256, padded=True)] == [250]  # pads 6: one run


def test_padded_run_sizes_are_few_shapes():
    """Each shape pays cuDNN's algorithm search once: a batch of 256 uses at most 6 shapes (8 .. 256)."""
    shapes = {padded_rows(stop - start, 256) for total in range(1, 2100) for start, stop in row_ranges(total, 256, True)}
    assert shapes == {8, 16, 32, 64, 128, 256}
    assert {padded_rows(n, 100) for n in range(1, 101)} == {8, 16, 32, 64, 100}


@pytest.mark.parametrize("count", [0, -1, 257])
def test_padded_rows_refuses_counts_outside_a_batch(count):
    with pytest.raises(ValueError, match="1 to 256 rows"):
        padded_rows(count, 256)


@pytest.mark.parametrize("batch_size,sizes", [(256, [8, 16, 32, 64, 128, 256]), (100, [8, 16, 32, 64, 100]),
                                              (8, [8]), (5, [5]), (1, [1])])
def test_padded_run_sizes_are_exactly_the_shapes_plans_use(batch_size, sizes):
    """warm_up runs these; every run of every plan must be one of them."""
    assert padded_run_sizes(batch_size) == sizes
    used = {padded_rows(stop - start, batch_size) for total in range(1, 4 * batch_size + 9)
            for start, stop in row_ranges(total, batch_size, padded=True)}
    assert used == set(sizes)
