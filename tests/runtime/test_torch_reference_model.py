"""Tests of the independent PyTorch reference against hand computations and a numpy closed form of every step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.support.torch_reference import (
    SAMPLE_MODELS,
    efficientnet_lite0_pretrained,
    module_by_path,
    normalised_pair,
    reference_fusion_cam,
    sample_model,
)


class PatchLinearNet(nn.Module):
    """A strided conv (the target layer, A linear in x) then a linear head on the flattened A: y(x) is affine in x."""

    def __init__(
        self,
        conv_w: np.ndarray,
        conv_b: np.ndarray,
        fc_w: np.ndarray,
        fc_b: np.ndarray,
        relu: nn.Module | None = None,
    ):
        super().__init__()
        k, _, sh, sw = conv_w.shape
        self.feat = nn.Conv2d(3, k, (sh, sw), stride=(sh, sw))
        self.act = relu if relu is not None else nn.Identity()
        self.head = nn.Linear(fc_w.shape[1], fc_w.shape[0])
        with torch.no_grad():
            self.feat.weight.copy_(torch.from_numpy(conv_w))
            self.feat.bias.copy_(torch.from_numpy(conv_b))
            self.head.weight.copy_(torch.from_numpy(fc_w))
            self.head.bias.copy_(torch.from_numpy(fc_b))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.feat(x)).flatten(1))


def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """[out, in] matrix of half-pixel-centre bilinear resizing along one axis (edges clamped)."""
    r = np.zeros((out_size, in_size))
    for i in range(out_size):
        src = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
        i0 = min(int(np.floor(src)), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        lam = src - i0
        r[i, i0] += 1 - lam
        r[i, i1] += lam
    return r


def np_norm(m: np.ndarray) -> np.ndarray:
    """Shift to min 0, divide by max if positive."""
    m = m - m.min()
    return m / m.max() if m.max() > 0 else np.zeros_like(m)


def np_softmax(v: np.ndarray) -> np.ndarray:
    """Max-subtracted softmax."""
    e = np.exp(v - v.max())
    return e / e.sum()


def closed_form(conv_w, conv_b, fc_w, fc_b, x, target, theta):
    """Every Fusion-CAM step for PatchLinearNet (no activation), computed with numpy alone."""
    k, _, sh, sw = conv_w.shape
    _, hh, ww = x.shape
    h, w = hh // sh, ww // sw

    def acts(z):
        blocks = z.reshape(3, h, sh, w, sw)
        return np.einsum("kcab,ciajb->kij", conv_w, blocks) + conv_b[:, None, None]

    def logits(z):
        return fc_w @ acts(z).reshape(-1) + fc_b

    def p(z):
        return np_softmax(logits(z))[c]

    c = int(np.argmax(logits(x))) if target is None else target
    rh, rw = bilinear_matrix(hh, h), bilinear_matrix(ww, w)
    up = lambda m: rh @ m @ rw.T  # noqa: E731
    a_map = acts(x)
    g = fc_w[c].reshape(k, h, w)
    gradcam = np_norm(up(np.maximum(np.einsum("k,kij->ij", g.mean(axis=(1, 2)), a_map), 0)))
    ups = [up(a_map[i]) for i in range(k)]
    scores = np.array([logits(x * np_norm(u))[c] for u in ups])
    weights = np_softmax(scores)
    scorecam = np_norm(np.maximum(sum(wt * u for wt, u in zip(weights, ups)), 0))
    t = np.percentile(gradcam, theta)
    denoised = np_norm(np.where(gradcam < t, 0, gradcam))
    b0 = p(np.zeros_like(x))
    b_den, b_reg = p(x * denoised) - b0, p(x * scorecam) - b0
    degenerate = b_den + b_reg <= 1e-6
    if degenerate:
        b_den, b_reg = 0.5, 0.5
    else:
        b_den, b_reg = b_den / (b_den + b_reg + 1e-8), b_reg / (b_den + b_reg + 1e-8)
    combined = np_norm(b_den * denoised + b_reg * scorecam)
    b_dr = p(x * combined) - b0
    if b_dr + b_reg <= 1e-6:
        degenerate, b_dr, b_reg2 = True, 0.5, 0.5
    else:
        b_dr, b_reg2 = b_dr / (b_dr + b_reg + 1e-8), b_reg / (b_dr + b_reg + 1e-8)
    l1, l2 = b_dr * combined, b_reg2 * scorecam
    s = np.clip(1 - np.abs(l1 - l2), 0, 1)
    fusion = np_norm(s * np.maximum(l1, l2) + (1 - s) * (l1 + l2) / 2)
    return {
        "class": c, "gradcam": gradcam, "scorecam": scorecam, "denoised": denoised, "combined": combined,
        "fusion": fusion, "scorecam_scores": scores, "scorecam_weights": weights, "gradients": g,
        "activations": a_map, "threshold": t, "degenerate": degenerate,
        "betas": {"b0": b0, "b_den": b_den, "b_reg": b_reg, "b_dr": b_dr, "b_reg2": b_reg2},
    }


def random_patch_net(seed: int, k: int = 4, classes: int = 3, hh: int = 6, ww: int = 8, s: int = 2):
    """Random weights for a PatchLinearNet on [3, hh, ww] inputs with s x s patches."""
    rng = np.random.default_rng(seed)
    conv_w = rng.normal(size=(k, 3, s, s)).astype(np.float32)
    conv_b = rng.normal(size=k).astype(np.float32)
    fc_w = (rng.normal(size=(classes, k * (hh // s) * (ww // s))) * 0.3).astype(np.float32)
    fc_b = rng.normal(size=classes).astype(np.float32)
    x = rng.normal(size=(3, hh, ww)).astype(np.float32)
    return conv_w, conv_b, fc_w, fc_b, x


def test_hand_computed_scores_weights_and_maps():
    # x channel 0 = (1, 0, 3, 0); A_0 = left pixel of each 1x2 patch = (1, 3), A_1 = -A_0.
    conv_w = np.zeros((2, 3, 1, 2), np.float32)
    conv_w[0, 0, 0, 0], conv_w[1, 0, 0, 0] = 1, -1
    fc_w = np.array([[1, 2, 0, 0], [0, 0, 1, 1]], np.float32)  # y_0 = A_00 + 2 A_01
    x = np.zeros((3, 1, 4), np.float32)
    x[0, 0] = (1, 0, 3, 0)
    model = PatchLinearNet(conv_w, np.zeros(2, np.float32), fc_w, np.zeros(2, np.float32))
    r = reference_fusion_cam(model, model.feat, torch.from_numpy(x), target=0)
    # up((1, 3)) = (1, 1.5, 2.5, 3) so M_0 = (0, .25, .75, 1), M_1 = (1, .75, .25, 0).
    # y_0(x*M_0) = 0 + 2*(3*.75) = 4.5 ; y_0(x*M_1) = 1 + 2*(3*.25) = 2.5
    np.testing.assert_allclose(r["scorecam_scores"], [4.5, 2.5], rtol=1e-6)
    a0 = 1 / (1 + np.exp(-2.0))
    np.testing.assert_allclose(r["scorecam_weights"], [a0, 1 - a0], rtol=1e-9)
    np.testing.assert_allclose(r["scorecam"], [[0, 0.25, 0.75, 1]], atol=1e-12)
    # G = (1, 2) for channel 0, zeros for channel 1: w = (1.5, 0), relu(1.5 * (1, 3)) upsampled then normed.
    np.testing.assert_allclose(r["gradients"], [[[1, 2]], [[0, 0]]])
    np.testing.assert_allclose(r["gradcam_weights"], [1.5, 0.0])
    np.testing.assert_allclose(r["gradcam"], [[0, 0.25, 0.75, 1]], atol=1e-12)
    assert r["threshold"] == pytest.approx(0.075)  # 10th percentile of (0, .25, .75, 1), linear
    assert r["class"] == 0


def test_threshold_keeps_values_equal_to_the_percentile():
    # A_0 = (0, 1, 1, 1), y_0 = sum(A_0): L_grad = norm(up(A_0)) = (0, .25, .75, 1, 1, 1, 1, 1), whose
    # median is exactly 1; only values strictly below it are zeroed.
    conv_w = np.zeros((1, 3, 1, 2), np.float32)
    conv_w[0, 0, 0, 0] = 1
    x = np.zeros((3, 1, 8), np.float32)
    x[0, 0] = (0, 0, 1, 0, 1, 0, 1, 0)
    fc_w = np.array([[1, 1, 1, 1], [0, 0, 0, 0]], np.float32)
    model = PatchLinearNet(conv_w, np.zeros(1, np.float32), fc_w, np.zeros(2, np.float32))
    r = reference_fusion_cam(model, model.feat, torch.from_numpy(x), target=0, theta=50.0)
    np.testing.assert_allclose(r["gradcam"], [[0, 0.25, 0.75, 1, 1, 1, 1, 1]], atol=1e-12)
    assert r["threshold"] == 1.0
    np.testing.assert_array_equal(r["denoised"], [[0, 0, 0, 1, 1, 1, 1, 1]])


@pytest.mark.parametrize(
    ("seed", "target", "theta", "degenerate"),
    [
        (0, None, 10.0, False),  # b_reg < 0 with a positive pair sum: the formula keeps the sign
        (3, 1, 10.0, False),  # b_den < 0
        (2, None, 35.0, False),
        (5, 1, 0.0, False),
        (0, 2, 10.0, True),  # first pair degenerate, second pair by the formula
        (1, 2, 10.0, True),  # both pairs degenerate
    ],
)
def test_patch_linear_net_matches_numpy_closed_form(seed, target, theta, degenerate):
    conv_w, conv_b, fc_w, fc_b, x = random_patch_net(seed)
    model = PatchLinearNet(conv_w, conv_b, fc_w, fc_b)
    r = reference_fusion_cam(model, model.feat, torch.from_numpy(x), target=target, theta=theta)
    want = closed_form(conv_w.astype(np.float64), conv_b.astype(np.float64), fc_w.astype(np.float64),
                       fc_b.astype(np.float64), x.astype(np.float64), target, theta)
    assert r["class"] == want["class"]
    for key in ("activations", "gradients", "scorecam_scores", "scorecam_weights"):
        np.testing.assert_allclose(r[key], want[key], rtol=1e-5, atol=1e-5, err_msg=key)
    for key in ("gradcam", "denoised", "scorecam", "combined", "fusion"):
        np.testing.assert_allclose(r[key], want[key], atol=1e-5, err_msg=key)
        assert r[key].shape == x.shape[1:] and r[key].dtype == np.float64
    for name, value in want["betas"].items():
        assert r["betas"][name] == pytest.approx(value, abs=1e-5), name
    assert r["degenerate"] == want["degenerate"] == degenerate
    assert r["fusion"].min() == 0.0 and r["fusion"].max() == pytest.approx(1.0)
    want_logits = fc_w.astype(np.float64) @ want["activations"].reshape(-1) + fc_b
    np.testing.assert_allclose(r["logits"], want_logits, rtol=1e-5, atol=1e-5)
    assert r["probability"] == pytest.approx(np_softmax(r["logits"].astype(np.float64))[r["class"]], rel=1e-6)


def test_degenerate_pair_uses_half_and_flags():
    # Every pixel pushes y_0 down (x > 0, conv and head weights make y_0 = -sum(x)), so any
    # non-negative mask gives p(x*M) <= p(0): both contributions are <= 0.
    conv_w = np.ones((2, 3, 2, 2), np.float32)
    fc_w = np.zeros((2, 2 * 2 * 2), np.float32)
    fc_w[0, :4] = -1.0  # y_0 = -(sum of channel 0 patches) = -sum(x)
    x = np.random.default_rng(0).uniform(0.02, 0.05, size=(3, 4, 4)).astype(np.float32)
    x[:, :2, :2] *= 3  # non-uniform so the maps are not constant
    model = PatchLinearNet(conv_w, np.zeros(2, np.float32), fc_w, np.zeros(2, np.float32))
    r = reference_fusion_cam(model, model.feat, torch.from_numpy(x), target=0)
    b = r["betas"]
    assert r["degenerate"] is True
    assert (b["b_den"], b["b_reg"]) == (0.5, 0.5)
    # The second pair sums to > 1e-6, so it keeps the formula with the already-normalised b_reg = 0.5.
    z = x.astype(np.float64) * r["combined"]
    p_dr = 1 / (1 + np.exp(z.sum()))  # softmax([-sum, 0])[0]
    raw = p_dr - b["b0"]
    assert raw < 0
    assert b["b_dr"] == pytest.approx(raw / (raw + 0.5 + 1e-8), rel=1e-5)
    assert b["b_reg2"] == pytest.approx(0.5 / (raw + 0.5 + 1e-8), rel=1e-5)
    assert b["b0"] == pytest.approx(0.5)
    assert np.isfinite(r["fusion"]).all() and r["fusion"].min() >= 0 and r["fusion"].max() <= 1


def test_normalised_pair_cases():
    assert normalised_pair(0.3, 0.1) == (pytest.approx(0.75), pytest.approx(0.25), False)
    a, b, flag = normalised_pair(0.3, -0.2)  # positive sum keeps the formula, sign and all
    assert (a, b, flag) == (pytest.approx(3.0), pytest.approx(-2.0), False)
    assert normalised_pair(1e-6, 0.0) == (0.5, 0.5, True)
    assert normalised_pair(-0.1, -0.2) == (0.5, 0.5, True)
    assert normalised_pair(0.2, -0.2) == (0.5, 0.5, True)


def test_constant_channel_gives_zero_mask():
    conv_w, conv_b, fc_w, fc_b, x = random_patch_net(5)
    conv_w[1] = 0.0  # channel 1 is its bias everywhere: a constant map, so a zero mask
    model = PatchLinearNet(conv_w, conv_b, fc_w, fc_b)
    r = reference_fusion_cam(model, model.feat, torch.from_numpy(x))
    with torch.no_grad():
        y_zero = model(torch.zeros(1, *x.shape))[0, r["class"]].item()
    assert r["scorecam_scores"][1] == pytest.approx(y_zero, rel=1e-6)
    assert np.ptp(r["activations"][1]) == 0.0
    assert np.isfinite(r["fusion"]).all()


@pytest.mark.slow
def test_grad_cam_matches_direct_formula_on_resnet18():
    model = sample_model("resnet18", seed=3)
    x = torch.randn(3, 64, 80, generator=torch.Generator().manual_seed(0))
    r = reference_fusion_cam(model, module_by_path(model, "layer4"), x)
    a, g, c = r["activations"].astype(np.float64), r["gradients"].astype(np.float64), r["class"]
    assert a.shape == (512, 2, 3)
    # layer4 -> global average pool -> fc, so dy_c/dA_k[i, j] = W_fc[c, k] / (h * w).
    fc_w = model.fc.weight.detach().numpy().astype(np.float64)
    np.testing.assert_allclose(g, np.broadcast_to(fc_w[c][:, None, None] / 6, g.shape), rtol=1e-5, atol=1e-9)
    want_logits = fc_w @ a.mean(axis=(1, 2)) + model.fc.bias.detach().numpy()
    np.testing.assert_allclose(r["logits"], want_logits, rtol=1e-4, atol=1e-5)
    cam = np.maximum(np.einsum("k,kij->ij", g.mean(axis=(1, 2)), a), 0)
    want = np_norm(bilinear_matrix(64, 2) @ cam @ bilinear_matrix(80, 3).T)
    np.testing.assert_allclose(r["gradcam"], want, atol=1e-6)
    # Two Score-CAM scores by direct forwards of x * norm(up(A_k)).
    for k in (0, 511):
        mask = np_norm(bilinear_matrix(64, 2) @ a[k] @ bilinear_matrix(80, 3).T)
        with torch.no_grad():
            y = model(x[None] * torch.from_numpy(mask).float())[0, c].item()
        assert r["scorecam_scores"][k] == pytest.approx(y, rel=1e-4, abs=1e-4)
    assert r["scorecam_weights"].sum() == pytest.approx(1.0)


def test_softmax_output_model_uses_pre_softmax_logits():
    conv_w, conv_b, fc_w, fc_b, x = random_patch_net(7)
    base = PatchLinearNet(conv_w, conv_b, fc_w, fc_b)
    wrapped = nn.Sequential(base, nn.Softmax(dim=1)).eval()
    r_base = reference_fusion_cam(base, base.feat, torch.from_numpy(x))
    r_soft = reference_fusion_cam(wrapped, wrapped[0].feat, torch.from_numpy(x))
    np.testing.assert_allclose(r_soft["logits"], r_base["logits"], rtol=1e-6)
    np.testing.assert_allclose(r_soft["scorecam_scores"], r_base["scorecam_scores"], rtol=1e-6)
    np.testing.assert_allclose(r_soft["fusion"], r_base["fusion"], atol=1e-9)
    assert r_soft["probability"] == pytest.approx(r_base["probability"])


def test_inplace_relu_after_layer_is_handled_and_model_untouched():
    conv_w, conv_b, fc_w, fc_b, x = random_patch_net(8)
    plain = PatchLinearNet(conv_w, conv_b, fc_w, fc_b, relu=nn.ReLU())
    inplace = PatchLinearNet(conv_w, conv_b, fc_w, fc_b, relu=nn.ReLU(inplace=True))
    r_plain = reference_fusion_cam(plain, plain.feat, torch.from_numpy(x))
    r_inplace = reference_fusion_cam(inplace, inplace.feat, torch.from_numpy(x))
    assert r_plain["activations"].min() < 0  # the hooked A is the pre-ReLU conv output
    for key in ("activations", "gradients", "scorecam_scores", "fusion"):
        np.testing.assert_array_equal(r_inplace[key], r_plain[key], err_msg=key)
    assert inplace.act.inplace is True


def test_huge_scores_keep_softmax_finite():
    conv_w, conv_b, fc_w, fc_b, x = random_patch_net(9)
    model = PatchLinearNet(conv_w, conv_b, fc_w * 2000, fc_b)
    r = reference_fusion_cam(model, model.feat, torch.from_numpy(x))
    assert np.abs(r["scorecam_scores"]).max() > 1000
    assert np.isfinite(r["scorecam_weights"]).all() and r["scorecam_weights"].sum() == pytest.approx(1.0)
    assert np.isfinite(r["fusion"]).all()


def test_layer_outside_model_is_rejected():
    conv_w, conv_b, fc_w, fc_b, x = random_patch_net(0)
    model = PatchLinearNet(conv_w, conv_b, fc_w, fc_b)
    with pytest.raises(ValueError, match="not a submodule"):
        reference_fusion_cam(model, nn.Conv2d(3, 4, 2), torch.from_numpy(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", SAMPLE_MODELS)
def test_sample_model_is_seeded_and_in_eval_mode(name):
    a, b = sample_model(name, seed=1), sample_model(name, seed=1)
    assert not a.training and not any(m.training for m in a.modules())
    pa, pb = list(a.parameters()), list(b.parameters())
    assert all(torch.equal(u, v) for u, v in zip(pa, pb))
    other = sample_model(name, seed=2)
    assert not torch.equal(next(other.parameters()), pa[0])


@pytest.mark.slow
def test_module_by_path():
    resnet = sample_model("resnet18")
    assert module_by_path(resnet, "layer4") is resnet.layer4
    assert module_by_path(resnet, "layer4.1.conv2") is resnet.layer4[1].conv2
    vgg = sample_model("vgg16")
    assert module_by_path(vgg, "features.29") is vgg.features[29]
    with pytest.raises(ValueError, match="layer9"):
        module_by_path(resnet, "layer9")


def test_efficientnet_lite0_pretrained_sees_a_cat():
    from skimage import data

    model = efficientnet_lite0_pretrained()
    assert not model.training
    assert isinstance(module_by_path(model, "_blocks.15"), nn.Module)
    rgb = torch.from_numpy(np.ascontiguousarray(data.chelsea())).permute(2, 0, 1).float()[None] / 255
    x = torch.nn.functional.interpolate(rgb, size=(224, 224), mode="bilinear", align_corners=False)
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        top = int(model(x)[0].argmax())
    assert 281 <= top <= 285  # ImageNet's domestic cat classes
