"""batch_retry.each_alone_on_failure, the one "a batch failed: retry each item alone" of the server's batcher and
explain-dataset's workers: which calls it makes, what each item gets, when results come out, what is not retried.
The two surfaces' own tests (tests/serve/test_protocols.py, tests/dataset/test_worker_retry.py) check it through
real models."""

from __future__ import annotations

import pytest

from fusioncam.batch_retry import each_alone_on_failure
from fusioncam.errors import InputError, NonFiniteError


class Model:
    """Squares numbers; any call holding a negative number fails as a whole with NonFiniteError."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, items):
        self.calls.append(list(items))
        if any(x < 0 for x in items):
            raise NonFiniteError(f"{min(items)} is negative")
        return [x * x for x in items]


def failed(item, exc):
    return f"error {item}: {exc}"


def test_a_batch_that_succeeds_is_one_call_and_each_item_gets_its_own_result():
    model = Model()
    assert list(each_alone_on_failure([1, 2, 3], model, failed)) == [(1, 1), (2, 4), (3, 9)]
    assert model.calls == [[1, 2, 3]]


def test_a_failing_batch_is_retried_item_by_item_and_only_the_failing_item_gets_the_error():
    model = Model()
    got = list(each_alone_on_failure([4, -1, 5, -2], model, failed))
    assert got == [(4, 16), (-1, "error -1: -1 is negative"), (5, 25), (-2, "error -2: -2 is negative")]
    assert model.calls == [[4, -1, 5, -2], [4], [-1], [5], [-2]]


def test_a_single_item_that_fails_is_not_called_again():
    model = Model()
    assert list(each_alone_on_failure([-3], model, failed)) == [(-3, "error -3: -3 is negative")]
    assert model.calls == [[-3]]


def test_no_items_make_no_call():
    model = Model()
    assert list(each_alone_on_failure([], model, failed)) == []
    assert model.calls == []


def test_each_retried_result_comes_out_before_the_next_item_is_called():
    model = Model()
    results = each_alone_on_failure([6, -1, 7], model, failed)
    assert next(results) == (6, 36)
    assert model.calls == [[6, -1, 7], [6]]  # the first item's answer is out; the others wait
    assert next(results) == (-1, "error -1: -1 is negative")
    assert model.calls[-1] == [-1]


def test_only_the_retried_errors_are_retried():
    calls = []

    def broken(items):
        calls.append(list(items))
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        list(each_alone_on_failure([1, 2], broken, failed))
    assert calls == [[1, 2]]

    model = Model()  # NonFiniteError is a FusionCamError but not an InputError: not retried when InputError is asked
    with pytest.raises(NonFiniteError):
        list(each_alone_on_failure([1, -1], model, failed, retried=InputError))
    assert model.calls == [[1, -1]]


def test_an_error_of_an_item_alone_that_is_not_retried_stops_the_retries():
    calls = []

    def fails_then_breaks(items):
        calls.append(list(items))
        if len(items) > 1:
            raise NonFiniteError("the batch")
        raise RuntimeError(f"a bug on {items[0]}")

    results = each_alone_on_failure([1, 2, 3], fails_then_breaks, failed)
    with pytest.raises(RuntimeError, match="a bug on 1"):
        next(results)
    assert calls == [[1, 2, 3], [1]]


def test_a_call_that_returns_the_wrong_number_of_results_is_named():
    with pytest.raises(ValueError, match="2 results for 3 items"):
        list(each_alone_on_failure([1, 2, 3], lambda items: [0, 0], failed))
    with pytest.raises(ValueError, match="0 results for 1 item"):
        list(each_alone_on_failure([1, -1], lambda items: [] if len(items) == 1 else Model()(items), failed))
