"""A small CNN whose target layer is a signed convolution output, seeded images, and the max |difference| of two maps:
what the pytorch-grad-cam parity tests share."""

from __future__ import annotations

import numpy as np
import torch


class SmallNet(torch.nn.Module):
    """Two convolutions (the second's output, signed, is the target: 16 channels, 8x8 at 32x32), a ReLU, pooling and
    a linear head over 5 classes."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        )
        self.head = torch.nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """n standard-normal float32 images [n, 3, size, size]."""
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def max_diff(a, b) -> float:
    """max |a - b| in float64."""
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


SMALL_SIZE = (32, 32)
SMALL_CHANNELS = 16  # SmallNet's features.2


def small_bundle(folder, **export_options):
    """SmallNet (torch seed 0) exported at its signed conv output `features.2`, 32x32, into `folder`/small.fcam
    (export_torch's options passed on, e.g. int8_scorer=True); the Bundle."""
    import fusioncam

    torch.manual_seed(0)
    return fusioncam.export_torch(SmallNet().eval(), "features.2", folder / "small.fcam", input_size=SMALL_SIZE,
                                  **export_options).bundle
