"""pytorch-grad-cam's reshape transforms (`pytorch_grad_cam.utils.reshape_transforms`): a transformer block's tokens
as a [N, C, h, w] map. fusioncam's export applies the given transform to the target tensor inside the graph."""

from __future__ import annotations


def vit_reshape_transform(tensor, height: int = 14, width: int = 14):
    """ViT tokens [N, 1 + h*w, C] without the class token, as [N, C, h, w]."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def swinT_reshape_transform(tensor, height: int = 7, width: int = 7):  # noqa: N802  (pytorch-grad-cam's name)
    """Swin tokens [N, h*w, C] as [N, C, h, w]."""
    result = tensor.reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


__all__ = ["vit_reshape_transform", "swinT_reshape_transform"]
