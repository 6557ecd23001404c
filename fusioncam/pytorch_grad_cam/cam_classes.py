"""pytorch-grad-cam's CAM classes on fusioncam: `GradCAM(model=..., target_layers=[...])`, then
`cam(input_tensor=..., targets=..., aug_smooth=..., eigen_smooth=...)` -> float32 [N, H, W].

Each class is one method of fusioncam's registry (runtime/methods/registry.py), run by an Explainer on a bundle
exported into the cache on first use (per target layer, input size and weights, as fusioncam.FusionCAM does).
Classifier maps use compat="pytorch-grad-cam" (pytorch-grad-cam's arithmetic where it differs from the methods'
authors'); segmentation bundles have no such option and use the default.

Several target layers: one bundle holding every layer and one explain pass for all of them (export/
several_layers_graph.py; the Explainer aggregates the layers' maps, runtime/layer_aggregation.py), or one bundle per
layer for segmentation models and for ShapleyCAM (whose graph is derived from one layer's; AblationCAM and ReciproCAM
run each layer's head graph of the one bundle);
then pytorch-grad-cam's aggregation (each layer's map ReLU'd, scaled to [0, 1] at its own resolution and resized to
the input; the mean over layers scaled to [0, 1]). For the methods whose weights come from the explain pass
(explain_pass_maps.py) the layer maps are formed from the explain pass as pytorch-grad-cam forms them; for the
engine's other maps of the form norm(up(relu(low))) (Score-CAM, the eigen methods, KPCA-CAM, FinerCAM, Ablation-CAM,
Recipro-CAM) the scaling at the layer's resolution is recovered exactly from the map (runtime/layer_aggregation.py);
Fusion-CAM, Group-CAM and Union-CAM maps are averaged as they are. Each layer's Score-CAM and Ablation-CAM runs its
own masked forwards or ablations, as pytorch-grad-cam's per-layer get_cam_weights does. Targets that are not one
logit (softmax, binary, raw scores) are the backward seed of a copy of the explain graph (target_seed_graph.py), for
the methods whose maps come from the explain pass. aug_smooth: pytorch-grad-cam's six test-time augmentations (horizontal flip x multiply by 0.9, 1, 1.1) stacked into one batch, each map un-flipped,
then averaged. eigen_smooth: explain_pass_maps.py (each layer's map then scaled as pytorch-grad-cam scales it).
"""

from __future__ import annotations

import numpy as np

from .. import arguments
from ..adapters.pytorch_grad_cam import _as_numpy, _is_module, _module_path
from ..errors import InputError, ModelLoadError
from ..runtime import Explainer, Explanation
from ..runtime.layer_aggregation import aggregate_layers
from ..runtime.methods.compat import PYTORCH_GRAD_CAM
from ..runtime.methods.registry import REGISTRY
from ..runtime.several_layers import layer_view, one_layer_methods
from ..graph_names import LOGITS
from .explain_pass_maps import (GRADIENT_PROJECTIONS, PROJECTIONS_ALREADY, WEIGHTED_ACTIVATIONS, check_eigen_smooth,
                                explain_pass, layer_map)
from .box_score_target import BoxScoreCAM, checked_targets, uses_box_score
from .graph_targets import GraphTargets, graph_targets
from .target_seed_graph import SeededExplain
from .utils.image import scale_cam_image

AUG_FACTORS = (0.9, 1.0, 1.1)  # pytorch-grad-cam 1.5.7's tta.Multiply factors, each with and without a flip
TARGET_FREE = ("eigencam", "kpcacam")  # maps that do not depend on the target (pytorch-grad-cam ignores it too)


class MethodNotAvailable(NotImplementedError):
    """A pytorch-grad-cam class whose method fusioncam's registry does not (yet) hold."""


class BaseCAM:
    """A CAM method in pytorch-grad-cam's shape. Subclasses name the registry method (`method`)."""

    method: str = ""

    def __init__(self, model, target_layers, reshape_transform=None, *, device: str = "auto") -> None:
        if self.method not in REGISTRY:
            available = ", ".join(name for name, cls in CLASS_METHODS.items() if cls.method in REGISTRY)
            raise MethodNotAvailable(f"{type(self).__name__} (method '{self.method}') is not available in this "
                                     f"fusioncam version; the available classes are {available}")
        if not _is_module(model):
            raise ModelLoadError(f"{type(self).__name__} needs a torch.nn.Module as model (as pytorch-grad-cam does); "
                                 f"got {type(model).__name__}. For bundles and .onnx files use fusioncam.Explainer")
        if not isinstance(target_layers, (list, tuple)) or not target_layers:
            raise InputError(f"target_layers must be a non-empty list of the model's modules (or module paths), "
                             f"e.g. [model.layer4[-1]]; got {type(target_layers).__name__}")
        arguments.callable_or_none("reshape_transform", reshape_transform)
        arguments.text("device", device)
        self.model = model
        self.target_layers = list(target_layers)
        self.layer_paths = [_module_path(model, layer) for layer in self.target_layers]
        self.reshape_transform = reshape_transform
        self.device = device
        self.batch_size: int | None = None  # masked images per scorer run (None: fusioncam's default)
        self.outputs = None  # the model's outputs (logits) of the last call, a torch tensor
        self.last_explanations: list[Explanation] = []  # per bundle, the last call's explanations (layer_maps: each
        # layer's maps where one bundle holds several layers)
        self._explainers: dict[tuple, Explainer] = {}
        self._seeded: dict[int, SeededExplain] = {}  # by id of an Explainer: its explain graph with target seeds

    # ------------------------------------------------------------------ the call

    def __call__(self, input_tensor, targets=None, aug_smooth: bool = False, eigen_smooth: bool = False
                 ) -> np.ndarray:
        """float32 maps [N, H, W] for preprocessed images [N, 3, H, W] (torch or NumPy)."""
        eigen_smooth = bool(eigen_smooth) and self.method not in PROJECTIONS_ALREADY  # as pytorch-grad-cam ignores it
        if eigen_smooth:
            check_eigen_smooth(self.method, type(self).__name__)
        images = _as_numpy(input_tensor)
        if images.ndim != 4:
            raise InputError(f"input_tensor must be [N, 3, H, W]; got shape {tuple(images.shape)}")
        n = int(images.shape[0])
        if uses_box_score(self.model, targets):  # a torchvision Faster R-CNN: box_score_target.py
            return self._box_score_call(images, checked_targets(self, targets, n), aug_smooth, eigen_smooth)
        plan = graph_targets(targets, n)
        if aug_smooth:
            stacked = np.concatenate([_augment(images, flip, factor) for flip in (False, True)
                                      for factor in AUG_FACTORS])
            maps = self._forward(stacked, plan.repeated(2 * len(AUG_FACTORS)), slice(n, 2 * n), eigen_smooth)
            chunks = maps.reshape(2 * len(AUG_FACTORS), n, *maps.shape[1:])
            flips = np.repeat([False, True], len(AUG_FACTORS))
            restored = [chunk[..., ::-1] if flip else chunk for chunk, flip in zip(chunks, flips)]
            return np.mean(np.float32(restored), axis=0)
        return self._forward(images, plan, slice(0, n), eigen_smooth)

    def _box_score_call(self, images: np.ndarray, targets: list, aug_smooth: bool, eigen_smooth: bool) -> np.ndarray:
        """FasterRCNNBoxScoreTarget maps (box_score_target.py); aug_smooth as below, one batch of six augmentations
        with the same targets (as pytorch-grad-cam gives each augmented image the same reference boxes)."""
        if getattr(self, "_box_score", None) is None:
            self._box_score = BoxScoreCAM()
        if not aug_smooth:
            return self._box_score.maps(self, images, targets, eigen_smooth)
        n = len(images)
        stacked = np.concatenate([_augment(images, flip, factor) for flip in (False, True) for factor in AUG_FACTORS])
        maps = self._box_score.maps(self, stacked, targets * (2 * len(AUG_FACTORS)), eigen_smooth)
        self.outputs = self.outputs[n : 2 * n]  # the un-augmented images' detections
        chunks = maps.reshape(2 * len(AUG_FACTORS), n, *maps.shape[1:])
        flips = np.repeat([False, True], len(AUG_FACTORS))
        return np.mean(np.float32([chunk[..., ::-1] if flip else chunk for chunk, flip in zip(chunks, flips)]), axis=0)

    def _forward(self, images: np.ndarray, plan: GraphTargets, keep: slice, eigen_smooth: bool = False) -> np.ndarray:
        """Each layer's map, aggregated as pytorch-grad-cam's aggregate_multi_layers; `outputs` from rows `keep`."""
        size = (int(images.shape[2]), int(images.shape[3]))
        if plan.seeds is not None and self.method in TARGET_FREE:
            plan = GraphTargets(None)
        elif plan.seeds is not None:
            self._check_seeded_method()
            return self._from_explain_pass(images, plan, keep, size, eigen_smooth)
        if eigen_smooth or (len(self.layer_paths) > 1 and self.method in WEIGHTED_ACTIVATIONS):
            return self._from_explain_pass(images, plan, keep, size, eigen_smooth)
        per_layer, feature_sizes = [], []
        self.last_explanations = []
        groups = self._layer_groups(plan.segmentation)
        for layers, count in groups:
            explainer = self._explainer(layers, size, plan.segmentation)
            explanation = explainer.explain(images, targets=plan.classes, methods=(self.method,),
                                            regions=plan.regions)
            self.last_explanations.append(explanation)
            if count > 1:  # one bundle for every layer: the Explainer aggregated them as pytorch-grad-cam does
                continue
            per_layer.append(explanation.maps[self.method])
            feature_sizes.append(explainer.bundle.manifest.feature_size)
        logits = self.last_explanations[-1].logits
        if logits is not None:
            import torch

            self.outputs = torch.from_numpy(np.ascontiguousarray(logits[keep]))
        if not per_layer:
            return self.last_explanations[0].maps[self.method]
        if len(per_layer) == 1:
            return scale_cam_image(np.maximum(per_layer[0], 0))
        # one bundle per layer (segmentation, ShapleyCAM): the layers' maps aggregated as pytorch-grad-cam does
        return aggregate_layers(self.method, per_layer, feature_sizes, PYTORCH_GRAD_CAM)

    def _from_explain_pass(self, images: np.ndarray, plan: GraphTargets, keep: slice, size: tuple[int, int],
                           eigen_smooth: bool) -> np.ndarray:
        """One explain pass per bundle (one for every layer, or one per layer: _layer_groups) and each layer's
        low-resolution map of the method (explain_pass_maps.py), then pytorch-grad-cam's own per-layer scaling (ReLU,
        scaled to [0, 1], cv2-resized to the input) and aggregation."""
        per_layer = []
        self.last_explanations = []
        for layers, count in self._layer_groups(plan.segmentation):
            explainer = self._explainer(layers, size, plan.segmentation)
            outputs = explain_pass(explainer, images, plan.classes, plan.regions, self._seeded_explain(explainer, plan),
                                   plan.seeds)
            for index in range(count):
                low = np.maximum(layer_map(self.method, layer_view(outputs, index), eigen_smooth), 0)
                per_layer.append(scale_cam_image(low, (size[1], size[0])))
        if not plan.segmentation:
            import torch

            self.outputs = torch.from_numpy(np.ascontiguousarray(outputs[LOGITS][keep]))
        return scale_cam_image(np.mean(np.maximum(np.stack(per_layer, axis=1), 0), axis=1))

    def _check_seeded_method(self) -> None:
        """Softmax, binary and raw-score targets change the explain pass's gradients (target_seed_graph.py); the
        methods that score masked images or ablations score the target logit, so they refuse such targets."""
        if self.method not in WEIGHTED_ACTIVATIONS and self.method not in GRADIENT_PROJECTIONS:
            methods = ", ".join(name for name, cls in CLASS_METHODS.items()
                                if cls.method in WEIGHTED_ACTIVATIONS or cls.method in GRADIENT_PROJECTIONS
                                or cls.method in TARGET_FREE)
            raise InputError(f"{type(self).__name__} scores the target class's logit, so ClassifierOutputSoftmaxTarget, "
                             f"BinaryClassifierOutputTarget and RawScoresOutputTarget are not available for it; use "
                             f"ClassifierOutputTarget, or one of the classes that take them: {methods}")

    def _seeded_explain(self, explainer: Explainer, plan: GraphTargets) -> SeededExplain | None:
        """The explain graph with per-image target seeds, for a plan with softmax, binary or raw-score targets."""
        if plan.seeds is None:
            return None
        classes = int(explainer.bundle.manifest.num_classes)
        if plan.binary and classes != 1:
            raise InputError(f"BinaryClassifierOutputTarget is for a model with one output logit (as in "
                             f"pytorch-grad-cam, where it multiplies the output by +1 or -1); this model has {classes} "
                             f"outputs: use ClassifierOutputTarget(category) or ClassifierOutputSoftmaxTarget")
        if id(explainer) not in self._seeded:
            session = getattr(explainer.backend, "_explain", None)
            providers = session.get_providers() if hasattr(session, "get_providers") else None
            self._seeded[id(explainer)] = SeededExplain(explainer.bundle, providers)
        return self._seeded[id(explainer)]

    def _layer_groups(self, segmentation: bool) -> list[tuple[str | tuple[str, ...], int]]:
        """(the layer path, or the paths, of one bundle; how many layers it holds) for each bundle a call uses: one
        bundle with every target layer, its explain pass run once for all of them (export/several_layers_graph.py),
        or one bundle per layer for segmentation models and the methods that run a graph derived from one layer's
        (ShapleyCAM's; runtime/several_layers.py)."""
        if len(self.layer_paths) > 1 and not segmentation and self.method not in one_layer_methods():
            return [(tuple(self.layer_paths), len(self.layer_paths))]
        return [(path, 1) for path in self.layer_paths]

    def _explainer(self, path: str | tuple[str, ...], size: tuple[int, int], segmentation: bool) -> Explainer:
        """The Explainer of one layer (or of a tuple of layers, one bundle) at one input size, exported into the
        cache if needed; reused while the weights, the size and batch_size stay the same."""
        from ..export.torch_export import state_sha256

        arguments.integer("batch_size", self.batch_size, minimum=1, allow_none=True)
        key = (path, size, segmentation, self.batch_size, state_sha256(self.model))
        if key not in self._explainers:
            from ..bundle_cache import module_bundle, module_segmentation_bundle

            if segmentation:
                if self.reshape_transform is not None:
                    raise InputError("reshape_transform with SemanticSegmentationTarget is not supported: "
                                     "segmentation export reads [N, K, h, w] target maps")
                bundle, compat = module_segmentation_bundle(self.model, path, size), None
            else:
                bundle = module_bundle(self.model, path if isinstance(path, str) else list(path), size,
                                       reshape=self.reshape_transform)
                compat = PYTORCH_GRAD_CAM
            self._explainers[key] = Explainer(bundle, device=self.device, batch_size=self.batch_size, compat=compat)
        return self._explainers[key]

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, exc_tb) -> None:
        self.release()

    def release(self) -> None:
        """Close the Explainers (their ONNX Runtime sessions); the next call opens them again from the cache."""
        for explainer in self._explainers.values():
            explainer.close()
        self._explainers.clear()
        self._seeded.clear()
        self._box_score = None  # FasterRCNNBoxScoreTarget's sessions (box_score_target.py)


def _augment(images: np.ndarray, flip: bool, factor: float) -> np.ndarray:
    """ttach's HorizontalFlip then Multiply, as pytorch-grad-cam's forward_augmentation_smoothing applies them."""
    out = images[..., ::-1] if flip else images
    return np.ascontiguousarray(out * np.float32(factor), dtype=np.float32)


def _cam(name: str, method: str, doc: str) -> type:
    return type(name, (BaseCAM,), {"method": method, "__doc__": doc, "__module__": __name__})


GradCAM = _cam("GradCAM", "gradcam", "Grad-CAM (Selvaraju et al., 2017).")
GradCAMPlusPlus = _cam("GradCAMPlusPlus", "gradcam++", "Grad-CAM++ (Chattopadhay et al., 2018).")
XGradCAM = _cam("XGradCAM", "xgradcam", "XGrad-CAM (Fu et al., 2020).")
ScoreCAM = _cam("ScoreCAM", "scorecam", "Score-CAM (Wang et al., 2020).")
HiResCAM = _cam("HiResCAM", "hirescam", "HiResCAM (Draelos and Carin, 2020).")
GradCAMElementWise = _cam("GradCAMElementWise", "gradcam-elementwise", "Grad-CAM element-wise.")
LayerCAM = _cam("LayerCAM", "layercam", "LayerCAM (Jiang et al., 2021).")
EigenCAM = _cam("EigenCAM", "eigencam", "Eigen-CAM (Muhammad and Yeasin, 2020).")
EigenGradCAM = _cam("EigenGradCAM", "eigengradcam", "EigenGrad-CAM.")


class FullGrad(BaseCAM):
    """FullGrad (Srinivas and Fleuret, 2019). As pytorch-grad-cam's, it ignores target_layers (which may be empty) and
    uses every convolution and BatchNorm bias (runtime/methods/fullgrad.py). One bundle serves it: the first target
    layer's, or the model's last Conv2d or BatchNorm2d when none is given."""

    method = "fullgrad"

    def __init__(self, model, target_layers, reshape_transform=None, **kwargs):
        if isinstance(target_layers, (list, tuple)) and not target_layers and _is_module(model):
            target_layers = [m for m in model.modules() if type(m).__name__ in ("Conv2d", "BatchNorm2d")][-1:]
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        self.target_layers, self.layer_paths = self.target_layers[:1], self.layer_paths[:1]


ShapleyCAM = _cam("ShapleyCAM", "shapleycam", "ShapleyCAM (Cai et al., 2025): Grad-CAM of G - 0.5 * (H A), in the graph.")
ReciproCAM = _cam("ReciproCAM", "reciprocam", "ReciproCAM (Byun and Lee, 2022).")
FusionCAM = _cam("FusionCAM", "fusion", "Fusion-CAM: Grad-CAM and Score-CAM fused (fusioncam's method).")
GroupCAM = _cam("GroupCAM", "groupcam", "Group-CAM (Zhang et al., 2021).")
UnionCAM = _cam("UnionCAM", "unioncam", "Union-CAM.")


class KPCA_CAM(BaseCAM):  # noqa: N801  (pytorch-grad-cam's name)
    """KPCA-CAM (Karmani et al., 2024): the sigmoid kernel with gamma = 1 / K, pytorch-grad-cam's default."""

    method = "kpcacam"

    def __init__(self, model, target_layers, reshape_transform=None, kernel: str = "sigmoid", gamma=None, **kwargs):
        if kernel != "sigmoid" or gamma is not None:
            raise InputError(f"KPCA_CAM: fusioncam's KPCA-CAM uses kernel='sigmoid' with gamma=None (1 / channels); "
                             f"got kernel={kernel!r}, gamma={gamma!r}")
        super().__init__(model, target_layers, reshape_transform, **kwargs)


class AblationCAM(BaseCAM):
    """Ablation-CAM (Desai and Ramaswamy, 2020) on the bundle's head graph (one head forward per ablated channel).

    pytorch-grad-cam's arguments: `batch_size` (ablated copies per forward, 32 by default) is the Explainer's batch
    size, the head-graph rows per run; the map does not depend on it. `ablation_layer` may be left out or be
    pytorch-grad-cam's default AblationLayer(), whose ablated value fusioncam's compat="pytorch-grad-cam" uses (0 when
    the image's smallest activation is 0, else that minimum - 1e7); another ablation layer is run as Python inside the
    model, which an exported graph cannot do, so it is refused. `ratio_channels_to_ablate` below 1.0 (pytorch-grad-cam's
    experimental choice of channels) is refused: every channel is ablated, each at the cost of one head forward."""

    method = "ablationcam"

    def __init__(self, model, target_layers, reshape_transform=None, ablation_layer=None, batch_size: int = 32,
                 ratio_channels_to_ablate: float = 1.0, **kwargs):
        if ablation_layer is not None and type(ablation_layer).__name__ != "AblationLayer":
            raise InputError(f"AblationCAM: ablation_layer={type(ablation_layer).__name__} is not supported; fusioncam "
                             f"ablates channels in the exported head graph with the value of pytorch-grad-cam's "
                             f"default AblationLayer (leave ablation_layer out, or pass AblationLayer())")
        arguments.integer("batch_size", batch_size, minimum=1)
        if isinstance(ratio_channels_to_ablate, bool) or not isinstance(ratio_channels_to_ablate, (int, float)) \
                or float(ratio_channels_to_ablate) != 1.0:
            raise InputError(f"AblationCAM: ratio_channels_to_ablate={ratio_channels_to_ablate!r} is not supported; "
                             f"fusioncam ablates every channel (1.0, the default), each with one head-graph forward "
                             f"instead of a whole-network one")
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        self.batch_size = batch_size
        self.ablation_layer = ablation_layer
        self.ratio_channels_to_ablate = 1.0


class FinerCAM(BaseCAM):
    """FinerCAM (Zhang et al., 2025) on Grad-CAM: each class against its three most similar, alpha = 1
    (pytorch-grad-cam's defaults)."""

    method = "finercam"

    def __init__(self, model, target_layers, reshape_transform=None, base_method=None, **kwargs):
        if base_method is not None and getattr(base_method, "__name__", "") != "GradCAM":
            raise InputError(f"FinerCAM: fusioncam's FinerCAM builds on Grad-CAM; got base_method="
                             f"{getattr(base_method, '__name__', base_method)}")
        super().__init__(model, target_layers, reshape_transform, **kwargs)


CLASS_METHODS: dict[str, type] = {cls.__name__: cls for cls in (
    GradCAM, GradCAMPlusPlus, XGradCAM, ScoreCAM, HiResCAM, GradCAMElementWise, LayerCAM, EigenCAM, EigenGradCAM,
    KPCA_CAM, FinerCAM, AblationCAM, FullGrad, ShapleyCAM, ReciproCAM, FusionCAM, GroupCAM, UnionCAM)}
