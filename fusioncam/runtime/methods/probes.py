"""Probes: masked inputs whose class probability a method needs; one round of them shares scorer batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..int8_sweep import float32_scoring


@dataclass
class MapProbe:
    """p(x_n * M_j) for full-resolution maps [M, H, W] of images image_index [M]."""

    key: str
    maps: object
    image_index: object

    def write(self, kernels, images, rows: slice, out, start: int) -> None:
        """Write this probe's rows `rows` into the scorer buffer `out` from row `start`."""
        kernels.write_map_masked_inputs(images, self.maps[rows], self.image_index[rows], out, start)


@dataclass
class BlendProbe:
    """p(M * x_n + (1 - M) * x_b) with M = norm(up(group_maps[n, g])) per row (n, g); g = -1 scores x_b itself."""

    key: str
    blurred: object
    group_maps: object
    mins: object
    maxs: object
    image_index: object
    group_index: object

    def write(self, kernels, images, rows: slice, out, start: int) -> None:
        """Write this probe's rows `rows` into the scorer buffer `out` from row `start`."""
        kernels.write_group_blended_inputs(images, self.blurred, self.group_maps, self.mins, self.maxs,
                                           self.image_index[rows], self.group_index[rows], out, start)


Probe = MapProbe | BlendProbe


def probe_probabilities(engine, probes: list[Probe]) -> dict[str, object]:
    """Each probe's class probabilities (float64 on the device, one per row), its rows packed with the others' into
    full batches."""
    scorer, xp = engine.scorer, engine.xp
    sizes = [int(probe.image_index.shape[0]) for probe in probes]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    total = int(offsets[-1])
    if total == 0:
        return {probe.key: xp.empty(0, dtype=xp.float64) for probe in probes}
    engine.probe_rows += total
    row_classes = engine.targets[xp.concatenate([probe.image_index for probe in probes])]

    def write(start: int, stop: int, buffer) -> None:
        """Rows start .. stop - 1 of all probes together: each probe writes the part of its rows that falls there."""
        for probe, first, last in zip(probes, offsets[:-1], offsets[1:]):
            low, high = max(start, first), min(stop, last)
            if low < high:
                probe.write(scorer.kernels, engine.images, slice(low - first, high - first), buffer, low - start)

    with float32_scoring(scorer):  # precision="int8": a few rows per image, scored exactly (runtime/int8_sweep.py)
        probabilities = scorer.class_probabilities(total, row_classes, write, engine.clock)
    return {probe.key: probabilities[first:last] for probe, first, last in zip(probes, offsets[:-1], offsets[1:])}
