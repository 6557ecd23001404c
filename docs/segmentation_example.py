"""Makes docs/segmentation-panel.png: a constructed segmentation network whose "top-left" class depends only on the
top-left quadrant of the astronaut photo, explained by all seven methods (python docs/segmentation_example.py).

The network is built, not trained (no segmentation weights ship in a PyPI package): positive random 3x3 filters, a
target layer whose 16 channels are each gated to one quadrant, and class 1 scored at the top-left pixels from the
mean of the 4 top-left channels (class 0: the constant 0). The answer is known: every map belongs in the top-left
quadrant, where the model predicts class 1 (the default region)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

import fusioncam
from fusioncam.atomic import write_bytes_atomic
from fusioncam.images import IMAGENET_MEAN, IMAGENET_STD, preprocess
from fusioncam.report.segmentation_pictures import segmentation_panel

SIZE = 224
METHODS = ("gradcam", "gradcam++", "xgradcam", "scorecam", "groupcam", "unioncam", "fusion")
LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "xgradcam": "XGrad-CAM", "scorecam": "Score-CAM",
          "groupcam": "Group-CAM", "unioncam": "Union-CAM", "fusion": "Fusion-CAM"}


class QuadrantGate(torch.nn.Module):
    """relu(x) times a fixed per-channel spatial gate: channels 4q .. 4q+3 live in quadrant q."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        gate = torch.zeros(channels, SIZE, SIZE)
        half, per = SIZE // 2, channels // 4
        for q, (rows, cols) in enumerate([(slice(0, half), slice(0, half)), (slice(0, half), slice(half, None)),
                                          (slice(half, None), slice(0, half)), (slice(half, None), slice(half, None))]):
            gate[q * per : (q + 1) * per, rows, cols] = 1.0
        self.register_buffer("gate", gate)

    def forward(self, x):
        return torch.relu(x) * self.gate


class TopLeftSegmenter(torch.nn.Module):
    """Class 1 ("top-left object") at the top-left pixels: 8 * (mean of the top-left channels / its value on the
    photo - 1/2); elsewhere -1. Class 0 ("background"): 0."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Conv2d(3, 16, 3, padding=1)
        with torch.no_grad():
            self.features.weight.abs_()
            self.features.bias.zero_()
        self.target = QuadrantGate()
        top_left = torch.zeros(SIZE, SIZE)
        top_left[: SIZE // 2, : SIZE // 2] = 1.0
        self.register_buffer("top_left", top_left)
        self.reference = 1.0

    def top_left_mean(self, x):
        return self.target(self.features(x))[:, :4].mean(dim=(1, 2, 3))

    def forward(self, x):
        score = 8.0 * (self.top_left_mean(x) / self.reference - 0.5)
        object_scores = score[:, None, None] * self.top_left - (1.0 - self.top_left)
        return torch.stack([torch.zeros_like(object_scores), object_scores], dim=1)


def main(out: Path) -> None:
    from skimage import data

    rgb = data.astronaut()
    image = preprocess(rgb, (SIZE, SIZE), IMAGENET_MEAN, IMAGENET_STD)[None]
    model = TopLeftSegmenter().eval()
    with torch.no_grad():
        model.reference = float(model.top_left_mean(torch.from_numpy(image)))
    with tempfile.TemporaryDirectory() as folder:
        bundle = Path(folder) / "top-left.fcam"
        fusioncam.export_torch_segmentation(model, "target", bundle, input_size=(SIZE, SIZE),
                                            class_names=["background", "top-left object"])
        with fusioncam.Explainer(bundle, device="cpu") as explainer:
            explanation = explainer.explain(image, targets="top-left object", methods=METHODS)
    picture = segmentation_panel(cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_AREA), explanation, 0,
                                 METHODS, labels=LABELS)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    write_bytes_atomic(out, encoded.tobytes())
    shares = {m: float(explanation.maps[m][0, : SIZE // 2, : SIZE // 2].sum() / explanation.maps[m][0].sum())
              for m in METHODS}
    print(f"wrote {out}; share of each map's mass in the top-left quadrant: "
          + ", ".join(f"{LABELS[m]} {s:.2f}" for m, s in shares.items()))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("segmentation-panel.png"))
