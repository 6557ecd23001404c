"""The result of explaining a batch: maps, predictions, betas and timings, as NumPy on every device."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BETA_NAMES = ("b_den", "b_reg", "b_dr", "b_reg2", "b0")


@dataclass
class Explanation:
    """Fusion-CAM and its intermediate maps for N images (float32 [N,H,W] in [0,1]) with per-image facts."""

    fusion: np.ndarray
    gradcam: np.ndarray
    denoised: np.ndarray
    scorecam: np.ndarray
    combined: np.ndarray  # L_dr
    classes: np.ndarray  # int64 [N]
    probabilities: np.ndarray  # float64 [N]: softmax probability of the explained class on the image
    betas: dict[str, np.ndarray]  # each float64 [N]; see BETA_NAMES
    degenerate: np.ndarray  # bool [N]: a beta pair sum <= 1e-6 fell back to (0.5, 0.5)
    timings: dict[str, float]  # seconds per stage for the whole batch, plus counters
    forwards_run: np.ndarray  # int64 [N]: Score-CAM masked forwards actually run per image
    forwards_skipped: np.ndarray  # int64 [N]: forwards answered from the cached all-zeros logit
    device: str = "cpu"
    class_names: list[str] | None = field(default=None, repr=False)

    @property
    def maps(self) -> dict[str, np.ndarray]:
        """Method name -> [N,H,W] map."""
        return {"fusion": self.fusion, "gradcam": self.gradcam, "scorecam": self.scorecam}

    def __len__(self) -> int:
        return int(self.fusion.shape[0])

    def class_name(self, i: int) -> str:
        """Readable name of image i's explained class."""
        c = int(self.classes[i])
        if self.class_names and 0 <= c < len(self.class_names):
            return self.class_names[c]
        return f"class {c}"

    def beta_row(self, i: int) -> dict[str, float]:
        """The five betas of image i as floats."""
        return {name: float(self.betas[name][i]) for name in BETA_NAMES}
