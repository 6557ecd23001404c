"""Small segmentation models for the tests: a seeded LRASPP with sharpened heads and a known-answer quadrant network."""

from __future__ import annotations

import numpy as np
import torch


METHODS = ("gradcam", "gradcam++", "xgradcam", "scorecam", "groupcam", "unioncam", "fusion")


SIZE = (48, 48)


def lraspp(classes: int = 4):
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    torch.manual_seed(0)
    model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=classes).eval()
    with torch.no_grad():  # random weights give near-uniform probabilities whose differences (Group-CAM's d_g, the
        for head in (model.classifier.low_classifier, model.classifier.high_classifier):  # betas) are float32 noise:
            head.weight.mul_(20.0)  # sharper class scores make them measurable
    return model


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, *SIZE)).astype(np.float32)


class QuadrantNet(torch.nn.Module):
    """Two classes; class 1's score at every pixel is alpha * (mean of channels 0..3 of the target layer - beta), and
    those channels are gated to the top-left quadrant; the other 12 channels live in the other three quadrants."""

    def __init__(self, size: int = 32, per_quadrant: int = 4) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.features = torch.nn.Conv2d(3, 4 * per_quadrant, 3, padding=1)
        with torch.no_grad():  # positive weights on a positive image: each channel's map is a near-flat plateau
            self.features.weight.abs_()
            self.features.bias.zero_()
        gate = torch.zeros(4 * per_quadrant, size, size)
        half = size // 2
        for q, (rows, cols) in enumerate([(slice(0, half), slice(0, half)), (slice(0, half), slice(half, None)),
                                          (slice(half, None), slice(0, half)), (slice(half, None), slice(half, None))]):
            gate[q * per_quadrant : (q + 1) * per_quadrant, rows, cols] = 1.0
        self.target = Gate(gate)
        self.per_quadrant, self.size = per_quadrant, size
        self.alpha, self.beta = 1.0, 0.0

    def top_left_mean(self, x):
        return self.target(self.features(x))[:, : self.per_quadrant].mean(dim=(1, 2, 3))

    def forward(self, x):
        score = self.alpha * (self.top_left_mean(x) - self.beta)
        scores = torch.stack([torch.zeros_like(score), score], dim=1)
        return scores[:, :, None, None].expand(-1, -1, self.size, self.size)


class Gate(torch.nn.Module):
    """relu(x) * a fixed spatial gate per channel (the known-answer network's target layer)."""

    def __init__(self, gate: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("gate", gate)

    def forward(self, x):
        return torch.relu(x) * self.gate
