"""Independent eager-PyTorch Grad-CAM++, XGrad-CAM, Group-CAM and Union-CAM, from the algorithm page's "Related methods".

It never imports fusioncam. One image at a time, with torch_reference's hooks and helpers; maps in float64, the model
in float32, masked forwards in chunks of SCORE_CHUNK. Union-CAM takes a `reference_fusion_cam` result for its Score-CAM
map, A, G, class and b0, so one reference Score-CAM sweep (the slow part) serves Fusion-CAM, Score-CAM and Union-CAM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tests.support.torch_reference import (
    SCORE_CHUNK,
    _inference_copy,
    _logits,
    _LogitsTap,
    _probability,
    norm,
    reference_fusion_cam,
    up,
)

GROUPS = 32
BLUR_KSIZE = 51
BLUR_SIGMA = 50.0
XGRAD_EPS = 1e-7


@dataclass
class Pass:
    """What one image's forward and backward pass gives, plus the model copy to run masked forwards on."""

    net: torch.nn.Module
    tap: _LogitsTap
    x: torch.Tensor  # [3, H, W] float32
    A: torch.Tensor  # [K, h, w] float64
    G: torch.Tensor  # [K, h, w] float64: d y_c / d A
    c: int

    @property
    def size(self) -> tuple[int, int]:
        return int(self.x.shape[1]), int(self.x.shape[2])

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """p(z) = softmax(model(z))[c] for each input of a float32 batch, float64, in chunks."""
        with torch.no_grad():
            return np.concatenate([_probability(_logits(self.net, self.tap, batch[i : i + SCORE_CHUNK]), self.c)
                                   for i in range(0, len(batch), SCORE_CHUNK)])

    def close(self) -> None:
        self.tap.close()


def gradient_pass(model: torch.nn.Module, layer: torch.nn.Module, image, target: int | None = None) -> Pass:
    """Logits, A and G = d y_c / d A of one image [3, H, W] by hooks on `layer` (c: the arg-max unless given)."""
    x = torch.as_tensor(image).detach().float()
    net, target_layer = _inference_copy(model, layer)
    tap = _LogitsTap(net)
    captured: list[torch.Tensor] = []
    handle = target_layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        with torch.enable_grad():
            logits = _logits(net, tap, x[None].clone().requires_grad_(True))
            c = int(logits[0].argmax()) if target is None else int(target)
            (grads,) = torch.autograd.grad(logits[0, c], captured[0])
    finally:
        handle.remove()
    return Pass(net, tap, x, captured[0][0].detach().double(), grads[0].detach().double(), c)


def weighted_map(A: torch.Tensor, w: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """norm(up(relu(sum_k w_k A_k))), relu before the upsampling as for Grad-CAM."""
    return norm(up(torch.relu((w[:, None, None] * A).sum(dim=0)), size))


def gradcam_plus_plus(run: Pass) -> np.ndarray:
    """alpha = g^2 / (2 g^2 + sum_ab A_k[a,b] * g^3) (0 where the denominator is 0); w_k = sum_ij alpha * relu(g)."""
    A, g = run.A, run.G
    denominator = 2 * g**2 + A.sum(dim=(1, 2))[:, None, None] * g**3
    alpha = torch.where(denominator != 0, g**2 / torch.where(denominator != 0, denominator, 1.0), 0.0)
    return weighted_map(A, (alpha * torch.relu(g)).sum(dim=(1, 2)), run.size).numpy()


def xgradcam(run: Pass) -> np.ndarray:
    """w_k = sum_ij (A_k[i,j] / (sum_ab A_k[a,b] + 1e-7)) * g."""
    A, g = run.A, run.G
    w = torch.stack([((A[k] / (A[k].sum() + XGRAD_EPS)) * g[k]).sum() for k in range(A.shape[0])])
    return weighted_map(A, w, run.size).numpy()


def reflect_101(p: int, length: int) -> int:
    """Index p folded into [0, length) by reflecting about the end pixels (dcb|abcd|cba), as often as needed."""
    if length == 1:
        return 0
    while p < 0 or p >= length:
        p = -p if p < 0 else 2 * (length - 1) - p
    return p


def gaussian_blur(x: torch.Tensor, ksize: int = BLUR_KSIZE, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Each channel of x [C, H, W] blurred by a ksize x ksize Gaussian (std sigma, taps summing to 1), reflect-101
    border, in float64: along rows, then along columns."""
    radius = ksize // 2
    offsets = torch.arange(ksize, dtype=torch.float64) - radius
    taps = torch.exp(-(offsets**2) / (2 * sigma**2))
    taps = taps / taps.sum()
    height, width = x.shape[1:]
    cols = torch.tensor([[reflect_101(i + t - radius, width) for t in range(ksize)] for i in range(width)])
    rows = torch.tensor([[reflect_101(i + t - radius, height) for t in range(ksize)] for i in range(height)])
    across = (x.double()[:, :, cols] * taps).sum(dim=-1)  # [C, H, W, ksize] -> [C, H, W]
    return (across[:, rows, :] * taps[None, None, :, None]).sum(dim=2)  # [C, H, ksize, W] -> [C, H, W]


def group_cam(run: Pass) -> dict:
    """Groups of torch.chunk(channels, 32); S_g = relu(sum_{k in g} w_k A_k) with Grad-CAM's w; M_g = norm(up(S_g));
    d_g = relu(p(M_g x + (1 - M_g) x_b) - p(x_b)); L = norm(relu(sum_g d_g M_g))."""
    A, size = run.A, run.size
    w = run.G.mean(dim=(1, 2))
    x = run.x.double()
    x_b = gaussian_blur(x)
    masks = []
    for group in torch.chunk(torch.arange(A.shape[0]), GROUPS):
        masks.append(norm(up(torch.relu((w[group, None, None] * A[group]).sum(dim=0)), size)))
    blends = torch.stack([(m * x + (1 - m) * x_b).float() for m in masks])
    p_blends = run.probabilities(blends)
    p_blurred = float(run.probabilities(x_b.float()[None])[0])
    d = np.maximum(p_blends - p_blurred, 0.0)
    total = sum(float(d_g) * m for d_g, m in zip(d, masks))
    return {"map": norm(torch.relu(total)).numpy(), "scores": d, "groups": len(masks)}


def union_cam(run: Pass, fusion: dict, theta: float = 10.0) -> dict:
    """Per channel, G values below that channel's theta-th percentile set to 0 (G');
    L_den = norm(up(sum_k relu(G'_k) A_k / sum_ij relu(G'_k))) (a channel whose sum is 0 adds nothing);
    betas never normalised; keep b_dr * L_dr if b_dr > b_reg, else b_reg * L_reg; then norm.

    `fusion` is reference_fusion_cam's result for the same image and class: its L_reg and b0.
    """
    A, G, x = run.A, run.G, run.x
    kept = G.clone()
    for k in range(G.shape[0]):
        t = float(np.percentile(G[k].numpy(), theta))  # linear interpolation, numpy's default
        kept[k][G[k] < t] = 0
    positive = torch.relu(kept)
    low = torch.zeros(A.shape[1:], dtype=torch.float64)
    for k in range(A.shape[0]):
        total = positive[k].sum()
        if total > 0:
            low += positive[k] * A[k] / total
    L_den = norm(up(low, run.size))
    L_reg = torch.from_numpy(fusion["scorecam"])
    b0 = float(fusion["betas"]["b0"])
    p_den, p_reg = run.probabilities(torch.stack([x * L_den.float(), x * L_reg.float()]))
    b_den, b_reg = float(p_den) - b0, float(p_reg) - b0
    L_dr = norm(b_den * L_den + b_reg * L_reg)
    b_dr = float(run.probabilities((x * L_dr.float())[None])[0]) - b0
    chosen = norm(b_dr * L_dr) if b_dr > b_reg else norm(b_reg * L_reg)
    return {"map": chosen.numpy(), "denoised": L_den.numpy(), "combined": L_dr.numpy(),
            "betas": {"b_den": b_den, "b_reg": b_reg, "b_dr": b_dr, "b0": b0}, "kept_combined": b_dr > b_reg}


def reference_methods(model: torch.nn.Module, layer: torch.nn.Module, image, target: int | None = None,
                      methods=("gradcam++", "xgradcam", "groupcam", "unioncam"), theta: float = 10.0) -> dict:
    """The chosen methods' maps (and facts) for one image [3, H, W]; with unioncam also the whole Fusion-CAM reference
    under "fusion_reference" (its Score-CAM sweep is the one Union-CAM uses)."""
    run = gradient_pass(model, layer, image, target)
    try:
        result: dict = {"class": run.c}
        if "gradcam++" in methods:
            result["gradcam++"] = gradcam_plus_plus(run)
        if "xgradcam" in methods:
            result["xgradcam"] = xgradcam(run)
        if "groupcam" in methods:
            result["groupcam"] = group_cam(run)
        if "unioncam" in methods:
            fusion = reference_fusion_cam(model, layer, run.x, run.c, theta)
            result["fusion_reference"] = fusion
            result["unioncam"] = union_cam(run, fusion, theta)
        return result
    finally:
        run.close()
