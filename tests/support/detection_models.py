"""Small detectors for the detection tests: a YOLO-style two-level head with the Ultralytics output layout, exported
with torch.onnx.export as a plain ONNX file (as someone else's tool would), and a known-answer two-region detector."""

from __future__ import annotations

import numpy as np
import torch

METHODS = ("gradcam", "gradcam++", "xgradcam", "scorecam", "groupcam", "unioncam", "fusion")
SIZE = (64, 64)
CLASSES = 3
TARGET_MODULE = "trunk.3"  # the ReLU after the stride-4 conv: feeds both levels
TARGET_TENSOR = "/trunk/trunk.3/Relu_output_0"  # its tensor in the legacy exporter's ONNX graph


class TinyYolo(torch.nn.Module):
    """Two levels (strides 8 and 16) on a shared trunk; per anchor (a grid cell) the raw output is cx, cy, w, h in
    input pixels and CLASSES sigmoid class scores, concatenated over levels as [N, 4 + C, A] (Ultralytics' layout).
    With `objectness` the output is [N, A, 5 + C] (YOLOv5's): box, sigmoid objectness, sigmoid class scores."""

    def __init__(self, classes: int = CLASSES, objectness: bool = False, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.classes, self.objectness = classes, objectness
        relu = torch.nn.ReLU
        self.trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), relu(),
                                         torch.nn.Conv2d(8, 16, 3, 2, 1), relu())
        self.p3 = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, 2, 1), relu())
        self.p4 = torch.nn.Sequential(torch.nn.Conv2d(16, 24, 3, 2, 1), relu())
        width = 4 + classes + (1 if objectness else 0)
        self.head3 = torch.nn.Conv2d(16, width, 1)
        self.head4 = torch.nn.Conv2d(24, width, 1)
        with torch.no_grad():  # sharper class scores than random init's near-0.5 sigmoids
            for head in (self.head3, self.head4):
                head.weight.mul_(8.0)

    @staticmethod
    def _level(raw: torch.Tensor, stride: int) -> torch.Tensor:
        """[N, width, h, w] -> [N, width, h*w] with boxes decoded to input pixels and scores activated."""
        n, width, h, w = raw.shape
        ys, xs = torch.meshgrid(torch.arange(h, dtype=raw.dtype), torch.arange(w, dtype=raw.dtype), indexing="ij")
        cx = (xs + torch.sigmoid(raw[:, 0]) * 2 - 0.5) * stride
        cy = (ys + torch.sigmoid(raw[:, 1]) * 2 - 0.5) * stride
        bw = torch.sigmoid(raw[:, 2]) * 4 * stride
        bh = torch.sigmoid(raw[:, 3]) * 4 * stride
        out = torch.cat([torch.stack([cx, cy, bw, bh], 1), torch.sigmoid(raw[:, 4:])], 1)
        return out.reshape(n, width, h * w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.trunk(x)
        p3 = self.p3(shared)
        out = torch.cat([self._level(self.head3(p3), 8), self._level(self.head4(self.p4(p3)), 16)], 2)
        return out.transpose(1, 2) if self.objectness else out


def instance_scores(output: torch.Tensor, objectness: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(boxes [N, A, 4] x0, y0, x1, y1; class scores [N, A, C]) of TinyYolo's raw output, written independently of
    fusioncam's graph rules."""
    per_anchor = output if objectness else output.transpose(1, 2)
    centre, size = per_anchor[..., 0:2], per_anchor[..., 2:4]
    boxes = torch.cat([centre - size / 2, centre + size / 2], -1)
    scores = per_anchor[..., 5:] * per_anchor[..., 4:5] if objectness else per_anchor[..., 4:]
    return boxes, scores


def export_tiny_yolo(model: TinyYolo, path, metadata: dict | None = None) -> None:
    """A plain ONNX file with a dynamic batch, as Ultralytics writes one (optionally with its metadata_props)."""
    import onnx

    torch.onnx.export(model.eval(), torch.zeros(1, 3, *SIZE), str(path), input_names=["images"],
                      output_names=["output0"], dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
                      opset_version=17, dynamo=False)
    if metadata:
        proto = onnx.load(str(path))
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, str(value)
        onnx.save(proto, str(path))


class TwoRegionDetector(torch.nn.Module):
    """Known answer: two anchors with fixed boxes (top-left and bottom-right quadrants) and one class; the target
    layer's channels 0..3 see only the top-left quadrant and 4..7 only the bottom-right; anchor 0's score is a
    sigmoid of channels 0..3's mean, anchor 1's of channels 4..7's. Output [N, 4 + 1, 2] (Ultralytics layout)."""

    def __init__(self, size: int = 32) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.features = torch.nn.Conv2d(3, 8, 3, padding=1)
        with torch.no_grad():
            self.features.weight.abs_()
            self.features.bias.zero_()
        gate = torch.zeros(1, 8, size, size)
        half = size // 2
        gate[:, :4, :half, :half] = 1
        gate[:, 4:, half:, half:] = 1
        self.register_buffer("gate", gate)
        q = float(half)
        self.register_buffer("boxes", torch.tensor([[q / 2, q / 2, q, q], [q + q / 2, q + q / 2, q, q]]).T[None])
        self.relu = torch.nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.features(x) * self.gate)  # the target layer: each channel lives in one quadrant
        means = a.mean(dim=(2, 3))
        scores = torch.sigmoid(torch.stack([means[:, :4].mean(1), means[:, 4:].mean(1)], 1) * 4 - 2)
        return torch.cat([self.boxes.expand(x.shape[0], -1, -1), scores[:, None, :]], 1)


class TwoLevelRegionDetector(torch.nn.Module):
    """Known answer on two levels: level A (full resolution, `relu_a`) lives in the top-left quadrant only, level B
    (stride 2, `relu_b`) in the bottom-right only, side by side on the image (neither computed from the other);
    anchor 0's score is a sigmoid of level A's mean, anchor 1's of level B's. Output [N, 4 + 1, 2] (Ultralytics)."""

    def __init__(self, size: int = 32) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv_a = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.conv_b = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        with torch.no_grad():
            for conv in (self.conv_a, self.conv_b):
                conv.weight.abs_()
                conv.bias.zero_()
        half = size // 2
        gate_a = torch.zeros(1, 4, size, size)
        gate_a[:, :, :half, :half] = 1
        gate_b = torch.zeros(1, 4, half, half)
        gate_b[:, :, half // 2:, half // 2:] = 1
        self.register_buffer("gate_a", gate_a)
        self.register_buffer("gate_b", gate_b)
        q = float(half)
        self.register_buffer("boxes", torch.tensor([[q / 2, q / 2, q, q], [q + q / 2, q + q / 2, q, q]]).T[None])
        self.relu_a = torch.nn.ReLU()
        self.relu_b = torch.nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu_a(self.conv_a(x) * self.gate_a)
        b = self.relu_b(self.conv_b(x) * self.gate_b)
        scores = torch.sigmoid(torch.stack([a.mean(dim=(1, 2, 3)), b.mean(dim=(1, 2, 3))], 1) * 8 - 2)
        return torch.cat([self.boxes.expand(x.shape[0], -1, -1), scores[:, None, :]], 1)


def random_images(n: int, seed: int = 0, size=SIZE) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, *size)).astype(np.float32)
