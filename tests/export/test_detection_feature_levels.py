"""A detector's feature pyramid as its target (the default for torchvision RetinaNet, FCOS and Faster R-CNN): one
bundle whose explain graph gives every level's activations and gradients of the instance's score from one backward
pass, checked against torch autograd of the model's own modules; each level's Grad-CAM, Score-CAM and Fusion-CAM
maps against the eager reference written from the algorithm page (tests/support/torch_reference_detection.py), and
the combined map as the documented rule (the levels' maps weighted by each level's attribution sum |A dS/dA| to
the instance's score, scaled to [0, 1]); levels named one by one;
the errors for a level that does not exist or that the RoI head does not pool."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from fusioncam import Explainer
from fusioncam.errors import LayerError
from fusioncam.export.detection_torch import TorchvisionDenseOutputs, export_torch_detection
from fusioncam.graph_names import layer_activations, layer_gradients
from fusioncam.runtime.layer_aggregation import min_max_scaled
from fusioncam.tasks.detection import InstanceSelection
from tests.export.test_detection_export import SIZE, _activated_scores
from tests.support.torch_reference import norm, up
from tests.support.torch_reference_detection import detection_methods

pytestmark = pytest.mark.slow  # each export traces a whole detector (about 25 s on 2 cores)

RETINANET_LEVELS = ["backbone.fpn['0']", "backbone.fpn['1']", "backbone.fpn['2']", "backbone.fpn['p6']"]
RETINANET_MODULES = ["backbone.fpn.layer_blocks.0", "backbone.fpn.layer_blocks.1", "backbone.fpn.layer_blocks.2",
                     "backbone.fpn.extra_blocks.p6"]  # the modules whose outputs those levels are


def slim_retinanet():
    """torchvision's RetinaNet on a ResNet-18 FPN (P3-P7) of 32 channels instead of 256 (seeded, random weights), so
    that the eager reference's Score-CAM sweep over every level stays short; at 128x128 p7 is 1x1."""
    from torchvision.models import resnet18
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    torch.manual_seed(0)
    backbone = BackboneWithFPN(resnet18(), return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
                               in_channels_list=[128, 256, 512], out_channels=32, extra_blocks=LastLevelP6P7(32, 32))
    model = RetinaNet(backbone, num_classes=4).eval()
    model.transform.min_size, model.transform.max_size = (SIZE[0],), SIZE[0]
    return model


@pytest.fixture(scope="module")
def retinanet(tmp_path_factory):
    model = slim_retinanet()
    result = export_torch_detection(model, None, tmp_path_factory.mktemp("fpn") / "retinanet", input_size=SIZE)
    images = np.random.default_rng(3).random((2, 3, *SIZE)).astype(np.float32)
    mean = np.array(model.transform.image_mean, np.float32)[:, None, None]
    std = np.array(model.transform.image_std, np.float32)[:, None, None]
    return model, result, (images - mean) / std


def test_the_default_target_is_every_level_the_head_reads(retinanet) -> None:
    _, result, _ = retinanet
    bundle = result.bundle
    assert result.picked_automatically and bundle.layer_names == RETINANET_LEVELS
    assert bundle.layer_feature_sizes == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert any("left out backbone.fpn['p7']: 1x1 at this input size" in note for note in result.notes)
    assert "the feature pyramid's levels" in result.describe()


def test_each_levels_gradient_equals_torch_autograd(retinanet) -> None:
    """The head reads each level on its own: an anchor's score depends on its own level's map and on the levels that
    map is computed from (p6 from level '2', p7 from p6: RetinaNet's LastLevelP6P7 on P5), so those get gradients
    (level '2''s the total of its own reading and what reaches it through p6) and the others exactly zero."""
    model, result, inputs = retinanet
    session = ort.InferenceSession(str(result.bundle.explain_path), providers=["CPUExecutionProvider"])
    # (image, anchor, class): anchors of level '0' (0-2303), '1' (2304-2879), '2' (2880-3023), p6 (3024-3059) and
    # p7 (3060-3068, left out as a target: its gradient reaches p6 and '2')
    rows = [(0, 7, 1), (1, 2500, 3), (0, 2950, 0), (1, 3050, 2), (0, 3065, 1)]
    reached = [{0}, {1}, {2}, {2, 3}, {2, 3}]
    names = [name(i) for i in range(4) for name in (layer_activations, layer_gradients)]
    got = dict(zip(names, session.run(names, {
        "input": inputs[[r[0] for r in rows]], "anchor": np.array([r[1] for r in rows], np.int64),
        "target": np.array([r[2] for r in rows], np.int64),
        "reference_box": np.array([[0, 0, *SIZE]] * len(rows), np.float32), "instance_image": np.arange(len(rows))})))
    for row, (image, anchor, cls) in enumerate(rows):
        features = model.backbone(torch.from_numpy(inputs[image : image + 1]))
        levels = [features[key] for key in ("0", "1", "2", "p6")]
        score = _activated_scores(model, "retinanet", features)[0, anchor, cls]
        wanted = torch.autograd.grad(score, levels, allow_unused=True)
        for index, (level, want) in enumerate(zip(levels, wanted)):
            assert float(np.abs(got[layer_activations(index)][row] - level[0].detach().numpy()).max()) <= 1e-4
            mine = got[layer_gradients(index)][row]
            if index not in reached[row]:
                assert want is None or float(want.abs().max()) == 0.0
                assert float(np.abs(mine).max()) == 0.0, (row, index)
                continue
            want = want[0].numpy()
            scale = float(np.abs(want).max())
            assert scale > 0
            error = float(np.abs(mine - want).max()) / scale
            assert error <= 1e-4, f"row {row}, level {RETINANET_LEVELS[index]}: relative error {error:.2e}"


def test_each_levels_maps_equal_the_eager_reference_and_combine_by_their_attribution(retinanet) -> None:
    """Two instances of one image, of level '0' and of p6: each level's Grad-CAM (zero where the instance's score
    does not read the level), Score-CAM (every level's channels mask the image) and Fusion-CAM."""
    model, result, inputs = retinanet
    anchors = [2100, 3050]
    with Explainer(result.bundle, device="cpu", batch_size=32) as explainer:
        found = explainer.explain(inputs[:1], methods=("gradcam", "scorecam", "fusion"), instances=[anchors])
    assert list(found.layer_maps) == RETINANET_LEVELS
    net = TorchvisionDenseOutputs(model, SIZE).eval()
    for row, anchor in enumerate(anchors):
        for label, path in zip(RETINANET_LEVELS, RETINANET_MODULES):
            want = detection_methods(net, net.get_submodule(f"model.{path}"), inputs[0], anchor,
                                     int(found.classes[row]), found.reference_boxes[row], group_and_union=False)
            for method in ("gradcam", "scorecam", "fusion"):
                error = float(np.abs(found.layer_maps[label][method][row] - want[method]).max())
                assert error <= 1e-4, f"{anchor} {label} {method}: max abs difference {error:.2e} from the reference"
        assert float(found.layer_maps[RETINANET_LEVELS[0 if row == 0 else 3]]["gradcam"][row].max()) > 0.99
    # the combined map: each level weighted by its attribution sum |A * dS/dA| to the instance's score (from the
    # explain graph's activations and gradients, checked against autograd above); levels it does not read weigh 0
    session = ort.InferenceSession(str(result.bundle.explain_path), providers=["CPUExecutionProvider"])
    names = [name(i) for i in range(4) for name in (layer_activations, layer_gradients)]
    outputs = dict(zip(names, session.run(names, {
        "input": np.repeat(inputs[:1], 2, axis=0), "anchor": found.anchors, "target": found.classes,
        "reference_box": found.reference_boxes, "instance_image": np.arange(2)})))
    weights = np.stack([np.abs(outputs[layer_activations(i)] * outputs[layer_gradients(i)]).sum(axis=(1, 2, 3))
                        for i in range(4)]).astype(np.float64)  # [level, instance]
    assert weights[1:, 0].max() == 0 and weights[0, 0] > 0  # level '0''s anchor reads level '0' only
    assert weights[0, 1] == 0 and weights[1, 1] == 0 and weights[3, 1] > 0  # p6's reads p6 (and '2' under it)
    for method in ("gradcam", "scorecam", "fusion"):
        stacked = np.stack([found.layer_maps[label][method] for label in RETINANET_LEVELS]).astype(np.float64)
        weighted = np.einsum("ln,lnhw->nhw", weights / weights.sum(axis=0), stacked)
        np.testing.assert_allclose(found.maps[method], min_max_scaled(np.float32(weighted)), atol=1e-5)
    np.testing.assert_allclose(found.maps["scorecam"][0], found.layer_maps[RETINANET_LEVELS[0]]["scorecam"][0],
                               atol=1e-5)  # the other levels' Score-CAM maps do not enter
    # the sweep ran every level's channels once per instance (4 x 32, constant channels skipped)
    assert int(found.forwards_run.sum() + found.forwards_skipped.sum()) == 2 * 4 * 32


def test_levels_named_one_by_one_and_the_errors(retinanet, tmp_path) -> None:
    model, _, _ = retinanet
    two = export_torch_detection(model, ["backbone.fpn['1']", "backbone.fpn['p6']"], tmp_path / "two",
                                 input_size=SIZE)
    assert two.bundle.layer_names == ["backbone.fpn['1']", "backbone.fpn['p6']"]
    with pytest.raises(LayerError, match=r"module 'backbone.fpn' has no 4-D output 'p9'; its maps are "
                                         r"backbone.fpn\['0'\], .*backbone.fpn\['p7'\]"):
        export_torch_detection(model, "backbone.fpn['p9']", tmp_path / "bad", input_size=SIZE)
    with pytest.raises(LayerError, match="1x1 map"):  # named on its own, a 1x1 level is refused, not left out
        export_torch_detection(model, "backbone.fpn['p7']", tmp_path / "p7", input_size=SIZE)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "p7").exists()


def test_faster_rcnn_default_is_the_pooled_levels(tmp_path) -> None:
    """Faster R-CNN's RoI head pools levels '0' and '1' (MobileNetV3 FPN); 'pool' feeds only the RPN, whose
    proposals are held fixed: the default takes the pooled levels, each level's gradient and Grad-CAM map equal
    torch autograd's through torchvision's MultiScaleRoIAlign, and naming 'pool' is an error that says why."""
    from fusioncam.bundle import load_bundle
    from tests.support.faster_rcnn_models import box_head_scores, exported_bundle, faster_rcnn, normalised, proposals

    model = faster_rcnn()
    bundle = load_bundle(exported_bundle(None))  # the default target; shared with the serve and dataset tests
    assert bundle.layer_names == ["backbone.fpn['0']", "backbone.fpn['1']"]
    inputs = normalised(model, np.random.default_rng(0).random((1, 3, *SIZE)).astype(np.float32)).numpy()
    with Explainer(bundle, device="cpu") as explainer:
        found = explainer.explain(inputs, methods="gradcam", instances=InstanceSelection(min_score=0.0,
                                                                                       max_instances=2))
    assert len(found.anchors) == 2
    x = torch.from_numpy(inputs[0])
    boxes = proposals(model, x)
    modules = [model.get_submodule(f"backbone.fpn.layer_blocks.{i}") for i in range(2)]
    for row, (slot, cls) in enumerate(zip(found.anchors, found.classes)):
        captured = {}  # by level: the FPN runs its layer blocks from the coarsest level down
        handles = [module.register_forward_hook(lambda m, i, o, level=level: captured.__setitem__(level, o))
                   for level, module in enumerate(modules)]
        try:
            scores, _ = box_head_scores(model, x, boxes)
            captured = [captured[level] for level in range(len(modules))]
            grads = torch.autograd.grad(scores[slot, cls], captured)
        finally:
            for handle in handles:
                handle.remove()
        pooled_on = 0  # MultiScaleRoIAlign pools each box on one level: the other level's map is zero
        for label, acts, grad in zip(bundle.layer_names, captured, grads):
            weights = grad.mean(dim=(2, 3), keepdim=True)
            want = norm(up(torch.relu((weights * acts).sum(dim=1)), SIZE))[0].detach().numpy()
            pooled_on += float(want.max()) > 0
            error = float(np.abs(found.layer_maps[label]["gradcam"][row] - want).max())
            assert error <= 1e-4, f"row {row}, {label}: max abs difference {error:.2e}"
        assert pooled_on == 1
    with pytest.raises(LayerError, match=r"fpn\['pool'\]: the RoI head pools only the levels .*featmap_names"):
        export_torch_detection(model, "backbone.fpn['pool']", tmp_path / "pool", input_size=SIZE)
