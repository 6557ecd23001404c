"""The result of explaining a batch: maps, predictions, betas and timings, as NumPy on every device.

Every method's output is reachable the same way, by its name: `result.maps[name]` (its map),
`result.method(name)` (map, intermediate maps and facts together), `result.facts[name]`. The attributes of
earlier versions (fusion, betas, degenerate, union_betas, group_scores, ...) read from these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ..errors import InputError

BETA_NAMES = ("b_den", "b_reg", "b_dr", "b_reg2", "b0")
UNION_BETA_NAMES = ("b_den", "b_reg", "b_dr", "b0")


@dataclass(frozen=True)
class MethodResult:
    """One method's output on the host: its map [N,H,W], its intermediate maps and its per-image facts."""

    name: str
    map: np.ndarray  # float32 [N, H, W] in [0, 1]
    maps: Mapping[str, np.ndarray]  # intermediate maps by name, e.g. Fusion-CAM's "denoised" and "combined"
    facts: Mapping[str, object]  # per-image arrays (or dicts of them) by name, e.g. "betas", "degenerate"


@dataclass(kw_only=True)
class Explanation:
    """The requested methods' maps for N images (float32 [N,H,W] in [0,1]) with per-image facts.

    `maps` holds exactly the requested methods; `method_maps[name]` and `facts[name]` hold each one's intermediate
    maps and per-image facts (what a method's own file returns: see runtime/methods/). `shared` holds the maps the
    methods share that were computed: "gradcam" (L_grad, for "gradcam" or "fusion") and "scorecam" (L_reg, for any
    method of the Score-CAM sweep); forwards_run and forwards_skipped are the sweep's, None without it.
    """

    maps: dict[str, np.ndarray]  # method name -> [N,H,W], in the canonical order of fusioncam METHODS
    classes: np.ndarray  # int64 [N]
    probabilities: np.ndarray  # float64 [N]: softmax probability of the explained class on the image
    logits: np.ndarray | None = None  # float32 [N, classes]: the explain pass's logits (predictions, top-k)
    timings: dict[str, float]  # seconds per stage for the whole batch, plus counters
    method_maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # method -> intermediate maps
    facts: dict[str, dict[str, object]] = field(default_factory=dict)  # method -> per-image facts
    shared: dict[str, np.ndarray] = field(default_factory=dict)  # shared maps that ran: gradcam, scorecam
    forwards_run: np.ndarray | None = None  # int64 [N]: Score-CAM masked forwards actually run per image
    forwards_skipped: np.ndarray | None = None  # int64 [N]: forwards answered from the cached all-zeros logit
    # a several-layer bundle's maps per target layer (layer name -> method -> [N,H,W]); `maps` then aggregates them
    # (runtime/layer_aggregation.py) and method_maps, facts and shared are the first layer's. {} for one layer
    layer_maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    device: str = "cpu"
    class_names: list[str] | None = field(default=None, repr=False)

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods that were computed."""
        return tuple(self.maps)

    def method(self, name: str) -> MethodResult:
        """Method `name`'s map, intermediate maps and facts; an InputError if it was not computed."""
        if name not in self.maps:
            raise InputError(f"method {name!r} was not computed in this explanation; it holds "
                             f"{', '.join(self.maps) or 'none'} (ask explain() for it with methods=...)")
        return MethodResult(name, self.maps[name], self.method_maps.get(name, {}), self.facts.get(name, {}))

    def fact(self, method: str, name: str):
        """Fact `name` of `method` (e.g. fact("fusion", "betas")), None when that method was not computed."""
        return self.facts.get(method, {}).get(name)

    def __len__(self) -> int:
        return int(self.classes.shape[0])

    def class_name(self, i: int) -> str:
        """Readable name of image i's explained class."""
        c = int(self.classes[i])
        if self.class_names and 0 <= c < len(self.class_names):
            return self.class_names[c]
        return f"class {c}"

    def beta_row(self, i: int) -> dict[str, float]:
        """The five Fusion-CAM betas of image i as floats ({} when Fusion-CAM was not computed)."""
        return self._row(self.betas, BETA_NAMES, i)

    def union_beta_row(self, i: int) -> dict[str, float]:
        """Union-CAM's four betas of image i as floats ({} when Union-CAM was not computed)."""
        return self._row(self.union_betas, UNION_BETA_NAMES, i)

    @staticmethod
    def _row(betas: dict[str, np.ndarray] | None, names: tuple[str, ...], i: int) -> dict[str, float]:
        return {} if betas is None else {name: float(betas[name][i]) for name in names}

    # The attributes of earlier versions, each read from the maps and facts above (None when it did not run).

    @property
    def fusion(self) -> np.ndarray | None:
        return self.maps.get("fusion")

    @property
    def gradcam(self) -> np.ndarray | None:
        """L_grad: computed for "gradcam" or "fusion"."""
        return self.shared.get("gradcam")

    @property
    def scorecam(self) -> np.ndarray | None:
        """L_reg: computed for any method of the Score-CAM sweep ("scorecam", "unioncam", "fusion")."""
        return self.shared.get("scorecam")

    @property
    def denoised(self) -> np.ndarray | None:
        """Fusion-CAM's L_den."""
        return self.method_maps.get("fusion", {}).get("denoised")

    @property
    def combined(self) -> np.ndarray | None:
        """Fusion-CAM's L_dr."""
        return self.method_maps.get("fusion", {}).get("combined")

    @property
    def betas(self) -> dict[str, np.ndarray] | None:
        """Fusion-CAM's betas, each float64 [N]; see BETA_NAMES."""
        return self.fact("fusion", "betas")

    @property
    def degenerate(self) -> np.ndarray | None:
        """bool [N]: a Fusion-CAM beta pair sum <= 1e-6 fell back to (0.5, 0.5)."""
        return self.fact("fusion", "degenerate")

    @property
    def union_betas(self) -> dict[str, np.ndarray] | None:
        """Union-CAM's un-normalised betas, float64 [N]; see UNION_BETA_NAMES."""
        return self.fact("unioncam", "betas")

    @property
    def union_kept_combined(self) -> np.ndarray | None:
        """bool [N]: Union-CAM kept b_dr * L_dr (b_dr > b_reg), else L_reg."""
        return self.fact("unioncam", "kept_combined")

    @property
    def group_scores(self) -> np.ndarray | None:
        """float64 [N, G]: Group-CAM's d_g (0 for a constant group)."""
        return self.fact("groupcam", "group_scores")

    @property
    def group_forwards(self) -> np.ndarray | None:
        """int64 [N]: Group-CAM blends actually scored per image."""
        return self.fact("groupcam", "group_forwards")
