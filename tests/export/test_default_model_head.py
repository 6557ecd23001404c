"""The embedded EfficientNet-Lite0 exports a head-only graph (Ablation-CAM, Recipro-CAM need it): its forward
flattens the pooled features with flatten(1), not the library's view(inputs.size(0), -1), with the same logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusioncam.export.model_zoo import efficientnet_lite0

pytestmark = pytest.mark.slow  # exports EfficientNet-Lite0 (about 10 s idle)


def test_forward_equals_the_library_forward_bit_for_bit():
    module = efficientnet_lite0().module
    images = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32))
    with torch.no_grad():
        ours = module(images)
        library = type(module).forward(module, images)
    assert torch.equal(ours, library)


def test_exported_bundle_has_a_head_graph_that_maps_activations_to_the_logits(tmp_path):
    import onnxruntime as ort

    import fusioncam

    model = efficientnet_lite0()
    fusioncam.export_torch(model.module, model.default_layer, tmp_path / "lite0.fcam", class_names=model.class_names)
    head = tmp_path / "lite0.fcam" / "head.onnx"
    assert head.is_file()
    images = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32))
    captured = {}
    hook = model.module.get_submodule(model.default_layer).register_forward_hook(
        lambda module, args, output: captured.setdefault("a", output.detach()))
    with torch.no_grad():
        logits = model.module(images).numpy()
    hook.remove()
    session = ort.InferenceSession(str(head), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: captured["a"].numpy()})[0]
    np.testing.assert_allclose(got, logits, rtol=1e-4, atol=1e-4)
