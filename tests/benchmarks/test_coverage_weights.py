"""The coverage run's weight conditioning (benchmarks/coverage.condition_weights): a random network whose
activations vanish gets batch-norm statistics and, if needed, scales 1 and shifts 0, and says so; a healthy one is
left exactly as built."""

from __future__ import annotations

import torch

from benchmarks.coverage import _float32_health, condition_weights

SIZE = 16


def tiny_batch_norm_net(scale: float) -> torch.nn.Module:
    """Three conv + batch norm + ReLU layers, every batch-norm scale `scale`, then a linear head."""
    torch.manual_seed(0)
    layers = []
    for channels_in in (3, 8, 8):
        layers += [torch.nn.Conv2d(channels_in, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(scale)
        model[-1].bias.zero_()
    return model.eval()


def test_dead_network_is_revived_and_says_how() -> None:
    model = tiny_batch_norm_net(scale=1e-4)  # each layer shrinks the activations ~1e4 times: logits ~1e-12
    assert _float32_health(model, SIZE)[2] < 1e-6
    words = condition_weights(model, SIZE)
    assert words is not None and "scales 1 and shifts 0" in words
    drift, spread, largest = _float32_health(model, SIZE)
    assert largest > 1e-2 and spread > 1e-3 and drift < 1e-5
    assert all(torch.all(m.weight == 1) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_healthy_network_is_left_alone() -> None:
    model = tiny_batch_norm_net(scale=1.0)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    assert condition_weights(model, SIZE) is None
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_zero_head_is_drawn_again() -> None:
    """torchvision's ViT initialises its head to zero: the logits are 0 whatever the image."""
    model = tiny_batch_norm_net(scale=1.0)
    with torch.no_grad():
        model[-1].weight.zero_()
    words = condition_weights(model, SIZE)
    assert words is not None and "1 all-zero linear layer(s) drawn" in words and "batch-norm" not in words
    assert model[-1].weight.abs().min() > 0 and _float32_health(model, SIZE)[1] > 1e-3
