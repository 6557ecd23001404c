"""The seeded random ResNet-18 with a sharpened head (logits x20) and its `layer4` bundle at 64x64, built once per
test process and shared by the runtime parity, methods parity and constant-channel tests (each export takes several
seconds on 2 cores).

Seeded random heads give nearly flat logits: every probability sits near 1/1000, and the betas, ratios of probability
differences of ~1e-6, would amplify float32 rounding far beyond 1e-5. The sharper head makes the betas well
conditioned, as they are for trained models."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch

from tests.support.torch_reference import sample_model

LAYER = "layer4"
SIZE = (64, 64)


@functools.lru_cache(maxsize=None)
def sharp_resnet18() -> torch.nn.Module:
    """sample_model("resnet18", seed=0) with its fc weight and bias multiplied by 20; tests must not change it."""
    model = sample_model("resnet18", seed=0)
    with torch.no_grad():
        model.fc.weight.mul_(20.0)
        model.fc.bias.mul_(20.0)
    return model


@functools.lru_cache(maxsize=None)
def sharp_resnet18_bundle() -> Path:
    """sharp_resnet18() exported at LAYER for SIZE inputs, once per test process, into a temporary folder removed at
    exit; tests read it and never change it."""
    import fusioncam

    folder = Path(tempfile.mkdtemp(prefix="sharp-resnet18-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    bundle = folder / "resnet18.fcam"
    fusioncam.export_torch(sharp_resnet18(), LAYER, bundle, input_size=SIZE)
    return bundle
