"""Run any subset of methods over one engine: shared work once, then their probe rounds in shared scorer batches."""

from __future__ import annotations

import inspect
from typing import Sequence

from .engine import Engine, MethodOutput
from .probes import probe_probabilities
from .registry import REGISTRY


def run_methods(engine: Engine, names: Sequence[str]) -> dict[str, MethodOutput]:
    """Each named method's output.

    Methods that need masked forwards are generators: each runs to its next `yield [probes]`, the probes of all
    methods in that round are merged (one key, one set of forwards) and scored together, and every method gets
    its answers back, until all have returned. Each method's own arithmetic is timed under its name.
    """
    for need in dict.fromkeys(need for name in names for need in REGISTRY[name].needs):
        getattr(engine, need)
    clock = engine.clock
    results: dict[str, MethodOutput] = {}
    waiting: dict[str, tuple] = {}  # name -> (generator, the probes it asked for)

    def advance(name: str, step, answer) -> None:
        """Run one method to its next probe round (or to its end) with `answer` sent in."""
        clock.start(name)
        try:
            waiting[name] = (step, step.send(answer))
        except StopIteration as finished:
            waiting.pop(name, None)
            results[name] = finished.value
        finally:
            clock.stop(name)

    for name in names:
        clock.start(name)
        outcome = REGISTRY[name].run(engine)
        clock.stop(name)
        if inspect.isgenerator(outcome):
            advance(name, outcome, None)
        else:
            results[name] = outcome
    while waiting:
        merged = {probe.key: probe for _, probes in waiting.values() for probe in probes}
        answers = probe_probabilities(engine, list(merged.values()))
        for name, (step, probes) in list(waiting.items()):
            advance(name, step, [answers[probe.key] for probe in probes])
    return {name: results[name] for name in names}
