"""The result of explaining a batch: maps, predictions, betas and timings, as NumPy on every device."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BETA_NAMES = ("b_den", "b_reg", "b_dr", "b_reg2", "b0")
UNION_BETA_NAMES = ("b_den", "b_reg", "b_dr", "b0")


@dataclass(kw_only=True)
class Explanation:
    """The requested methods' maps for N images (float32 [N,H,W] in [0,1]) with per-image facts.

    `maps` holds exactly the requested methods. Every other map or fact is set when the computation that
    produces it ran, else None: fusion, denoised, combined, betas and degenerate need "fusion"; gradcam needs
    "gradcam" or "fusion"; scorecam, forwards_run and forwards_skipped need the Score-CAM sweep ("scorecam",
    "unioncam" or "fusion"); union_* need "unioncam"; group_* need "groupcam".
    """

    maps: dict[str, np.ndarray]  # method name -> [N,H,W], in the canonical order of fusioncam METHODS
    classes: np.ndarray  # int64 [N]
    probabilities: np.ndarray  # float64 [N]: softmax probability of the explained class on the image
    logits: np.ndarray | None = None  # float32 [N, classes]: the explain pass's logits (predictions, top-k)
    timings: dict[str, float]  # seconds per stage for the whole batch, plus counters
    fusion: np.ndarray | None = None
    gradcam: np.ndarray | None = None
    denoised: np.ndarray | None = None  # L_den
    scorecam: np.ndarray | None = None  # L_reg
    combined: np.ndarray | None = None  # L_dr
    betas: dict[str, np.ndarray] | None = None  # each float64 [N]; see BETA_NAMES
    degenerate: np.ndarray | None = None  # bool [N]: a beta pair sum <= 1e-6 fell back to (0.5, 0.5)
    forwards_run: np.ndarray | None = None  # int64 [N]: Score-CAM masked forwards actually run per image
    forwards_skipped: np.ndarray | None = None  # int64 [N]: forwards answered from the cached all-zeros logit
    union_betas: dict[str, np.ndarray] | None = None  # Union-CAM's un-normalised betas, float64 [N]; UNION_BETA_NAMES
    union_kept_combined: np.ndarray | None = None  # bool [N]: Union-CAM kept b_dr * L_dr (b_dr > b_reg), else L_reg
    group_scores: np.ndarray | None = None  # float64 [N, G]: Group-CAM's d_g (0 for a constant group)
    group_forwards: np.ndarray | None = None  # int64 [N]: Group-CAM blends actually scored per image
    device: str = "cpu"
    class_names: list[str] | None = field(default=None, repr=False)

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods that were computed."""
        return tuple(self.maps)

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
        if self.betas is None:
            return {}
        return {name: float(self.betas[name][i]) for name in BETA_NAMES}

    def union_beta_row(self, i: int) -> dict[str, float]:
        """Union-CAM's four betas of image i as floats ({} when Union-CAM was not computed)."""
        if self.union_betas is None:
            return {}
        return {name: float(self.union_betas[name][i]) for name in UNION_BETA_NAMES}
