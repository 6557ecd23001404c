"""The head graph export writes: the network after the target layer, whose logits equal the torch model's tail on
the same activations; listed and hashed in the manifest; refused (with the reason) where the tail reads the image."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from fusioncam.bundle import HEAD_GRAPH, load_bundle
from fusioncam.errors import BundleError
from fusioncam.export import export_torch
from fusioncam.graph_names import ACTIVATIONS, LOGITS
from fusioncam.hashing import file_sha256


class Staged(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.block = nn.Sequential(nn.Conv2d(6, 10, 3, padding=1), nn.ReLU())
        self.tail = nn.Sequential(nn.Conv2d(10, 10, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(10, 4))

    def forward(self, x):
        return self.tail(self.block(self.stem(x)))


class Residual(Staged):
    def forward(self, x):  # the stem's output reaches the tail around the block
        stem = self.stem(x)
        return self.tail(self.block(stem) + stem.mean(dim=1, keepdim=True))


def test_head_graph_is_the_models_tail(tmp_path):
    model = Staged().eval()
    result = export_torch(model, "block", tmp_path / "staged.fcam", input_size=(24, 24))
    bundle = result.bundle
    assert HEAD_GRAPH in bundle.manifest.files and bundle.head_path is not None
    assert bundle.manifest.files[HEAD_GRAPH] == file_sha256(bundle.head_path)
    acts = torch.randn(3, 10, 12, 12).relu()  # any activations, not only the model's own
    with torch.no_grad():
        expected = model.tail(acts).numpy()
    session = ort.InferenceSession(str(bundle.head_path), providers=["CPUExecutionProvider"])
    got = session.run([LOGITS], {ACTIVATIONS: acts.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert [node.op_type for node in __import__("onnx").load(str(bundle.head_path), load_external_data=False)
            .graph.node if node.op_type == "Conv"] == ["Conv"]  # the tail's one conv, no backbone


def test_edited_head_graph_is_detected(tmp_path):
    bundle = export_torch(Staged().eval(), "block", tmp_path / "staged.fcam", input_size=(24, 24)).bundle
    with open(bundle.head_path, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="head.onnx was changed after export"):
        load_bundle(bundle.path)


def test_tail_that_reads_the_image_gets_no_head_graph(tmp_path):
    result = export_torch(Residual().eval(), "block", tmp_path / "residual.fcam", input_size=(24, 24))
    assert HEAD_GRAPH not in result.bundle.manifest.files
    text = result.describe()
    assert "no head graph, so no AblationCAM or ReciproCAM" in text and "bypass" in text


def test_head_graph_that_fails_its_check_is_left_out(tmp_path, monkeypatch):
    """A head graph whose logits disagree with the explain graph's is not written; the rest of the bundle is."""
    from fusioncam.export import bundle_builder, head_graph

    real = head_graph.check_head

    def disagreeing(head, explain_session, size, origin):
        import onnx

        model = onnx.load(str(head), load_external_data=False)
        assert model.graph.input[0].name == ACTIVATIONS  # the real head graph reached the check
        real(head, explain_session, size, origin)  # passes on the real graph ...
        raise bundle_builder.ModelLoadError(f"{origin}: the head graph's logits differ")  # ... then we make it fail

    monkeypatch.setattr(bundle_builder, "check_head", disagreeing)
    result = export_torch(Staged().eval(), "block", tmp_path / "staged.fcam", input_size=(24, 24))
    assert HEAD_GRAPH not in result.bundle.manifest.files and not (result.bundle.path / HEAD_GRAPH).exists()
    assert "no head graph, so no AblationCAM or ReciproCAM" in result.describe() and "logits differ" in result.describe()
    load_bundle(result.bundle.path)  # the bundle written without it is whole
