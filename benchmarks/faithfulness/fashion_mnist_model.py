"""The study's small CNN for Fashion-MNIST: trained on the CPU with a fixed seed, exported as a fusioncam bundle.

The bundle's preprocessing matches training: fusioncam decodes a grey PNG as RGB with three equal channels and
normalises each with the manifest's mean/std (the training set's pixel mean and standard deviation, the same for the
three channels); the model averages the three channels first, so it sees exactly the normalised grey image it was
trained on.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TARGET_LAYER = "block3"  # 32 channels at 7x7: the last convolution block, the CAM target


def small_cnn():
    """conv 16 (28x28) -> pool -> conv 32 (14x14) -> pool -> conv 32 (7x7, the target) -> linear 10; each
    convolution followed by batch norm and ReLU. About 1.5 M multiply-adds per image: the evaluation runs a few
    thousand forwards per image."""
    import torch
    from torch import nn

    def block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
        layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)

    class SmallCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block1 = block(1, 16, True)
            self.block2 = block(16, 32, True)
            self.block3 = block(32, 32, False)
            self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(32 * 7 * 7, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.mean(dim=1, keepdim=True)  # three equal channels (a grey PNG decoded as RGB) -> one
            return self.head(self.block3(self.block2(self.block1(x))))

    return SmallCNN()


@dataclass
class Normalisation:
    """The training images' pixel mean and standard deviation on the 0..1 scale (every channel)."""

    mean: float
    std: float

    def apply(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, 28, 28] -> float32 [N, 3, 28, 28], three equal channels, normalised as fusioncam does."""
        x = (images.astype(np.float32) / 255.0 - np.float32(self.mean)) / np.float32(self.std)
        return np.repeat(x[:, None], 3, axis=1)


def normalisation(train_images: np.ndarray) -> Normalisation:
    scaled = train_images.astype(np.float64) / 255.0
    return Normalisation(float(scaled.mean()), float(scaled.std()))


@dataclass
class Trained:
    model: object
    norm: Normalisation
    epochs: int
    seconds: float
    train_loss: list


def train(images: np.ndarray, labels: np.ndarray, epochs: int = 4, seed: int = 0, batch: int = 128,
          lr: float = 2e-3, threads: int | None = None, log=print) -> Trained:
    """Adam, cross-entropy, the learning rate halved each epoch after the first; a fixed seed for the weights and
    the shuffling (torch's CPU kernels are deterministic here)."""
    import torch

    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    norm = normalisation(images)
    x_all = torch.from_numpy((images.astype(np.float32) / 255.0 - norm.mean) / norm.std)[:, None]
    y_all = torch.from_numpy(labels)
    model = small_cnn()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.StepLR(optimiser, step_size=1, gamma=0.5)
    generator = torch.Generator().manual_seed(seed)
    losses, start = [], time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_all), generator=generator)
        total = 0.0
        for first in range(0, len(order), batch):
            pick = order[first:first + batch]
            optimiser.zero_grad()
            # the model's own forward: one channel is its channel mean already
            loss = torch.nn.functional.cross_entropy(model(x_all[pick]), y_all[pick])
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(pick)
        schedule.step()
        losses.append(total / len(order))
        log(f"epoch {epoch + 1}/{epochs}: training loss {losses[-1]:.4f} ({time.perf_counter() - start:.0f} s)")
    model.eval()
    return Trained(model, norm, epochs, time.perf_counter() - start, losses)


def predict(model, norm: Normalisation, images: np.ndarray, batch: int = 1000) -> np.ndarray:
    """Class indices the trained torch model gives (eval mode) for uint8 [N, 28, 28] images."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for first in range(0, len(images), batch):
            out.append(model(torch.from_numpy(norm.apply(images[first:first + batch]))).argmax(1).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def export_bundle(trained: Trained, out: str | os.PathLike, class_names: list[str]) -> Path:
    """The fusioncam bundle (with the float16 scorer too, for the precision comparison)."""
    from fusioncam import export_torch

    m, s = trained.norm.mean, trained.norm.std
    export_torch(trained.model, TARGET_LAYER, out, input_size=(28, 28), mean=(m, m, m), std=(s, s, s),
                 class_names=class_names, fp16_scorer=True)
    return Path(out)
