"""A batch failed: retry each item alone, so one bad image fails only itself.

The server's dynamic batcher (serve/batching.py: items are requests) and explain-dataset's workers
(dataset/worker.py: items are the decoded images of a block) explain many items in one call. A failure one image
brings (its logits are not finite, its region does not fit) fails the whole call; then each item is explained again
on its own, and only the ones that fail alone get that surface's error (an HTTP 400 answer, an error row).
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence, TypeVar

from .errors import FusionCamError

Item = TypeVar("Item")
Result = TypeVar("Result")


def each_alone_on_failure(items: Sequence[Item], call: Callable[[Sequence[Item]], Sequence[Result]],
                          failed: Callable[[Item, Exception], Result],
                          retried: type[Exception] | tuple[type[Exception], ...] = FusionCamError,
                          ) -> Iterator[tuple[Item, Result]]:
    """Yield (item, result) for every item, in order: `call(items)`'s results (one per item) when it succeeds;
    when it raises `retried` (by default any FusionCamError, an error fusioncam raises on purpose), `call([item])`
    for each item in turn, and `failed(item, error)` for an item whose call alone raises `retried` too.

    Results are yielded as soon as they exist, so a caller can hand the first item its answer while the next is
    retried. A single item is not retried (its failure is already its own). Exceptions other than `retried` (bugs,
    a stopped run) propagate from the call that raised them, and the retries stop there."""
    items = list(items)
    if not items:
        return
    try:
        results = list(call(items))
    except retried as exc:
        if len(items) == 1:
            yield items[0], failed(items[0], exc)
            return
    else:
        if len(results) != len(items):
            raise ValueError(f"a batch call returned {len(results)} results for {len(items)} items")
        yield from zip(items, results)
        return
    for item in items:
        try:
            results = list(call([item]))
        except retried as exc:
            yield item, failed(item, exc)
            continue
        if len(results) != 1:
            raise ValueError(f"a batch call returned {len(results)} results for 1 item")
        yield item, results[0]
