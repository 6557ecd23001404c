"""The tools users have today, timed on the same model and image: pytorch-grad-cam and the eager reference."""

from __future__ import annotations

import contextlib

import numpy as np

from .timing import median_seconds



def grad_cam_version(module) -> str:
    """pytorch-grad-cam's installed version (its distribution is called grad-cam)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("grad-cam")
    except PackageNotFoundError:
        return getattr(module, "__version__", "unknown")


def time_pytorch_grad_cam(model, layer_module, image: np.ndarray, target: int, repeats: int = 1, cuda: bool = False) -> dict:
    """pytorch-grad-cam GradCAM and ScoreCAM (batch_size 16 and 128) on one image, seconds (median); on the GPU with cuda."""
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam import GradCAM, ScoreCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        return {"skipped": "pytorch-grad-cam is not installed (pip install 'fusioncam[bench]')"}
    import torch

    x = torch.from_numpy(image[None])
    if cuda:
        model, x = model.cuda(), x.cuda()
    targets = [ClassifierOutputTarget(int(target))]
    results = {"version": grad_cam_version(pytorch_grad_cam)}
    with GradCAM(model=model, target_layers=[layer_module]) as cam:
        results["gradcam_s"], _ = median_seconds(lambda: cam(input_tensor=x, targets=targets), repeats=max(repeats, 3))
    for batch in (16, 128):
        results[f"scorecam_batch{batch}_s"] = _scorecam_seconds(ScoreCAM, model, layer_module, x, targets, batch, repeats)
    if cuda:  # PyTorch runs cuDNN convolutions in TF32 by default; fusioncam's fp32 is strict fp32
        results["conv_tf32_default"] = bool(torch.backends.cudnn.allow_tf32)
        with _tf32_convolutions(False):  # the like-for-like row for fusioncam's fp32
            results["scorecam_batch128_strict_fp32_s"] = _scorecam_seconds(ScoreCAM, model, layer_module, x, targets,
                                                                           128, repeats)
    return results


def _scorecam_seconds(score_cam, model, layer_module, x, targets, batch: int, repeats: int) -> float:
    """Median seconds of pytorch-grad-cam ScoreCAM on x with `batch_size` masked images per forward."""
    with score_cam(model=model, target_layers=[layer_module]) as cam:
        cam.batch_size = batch
        seconds, _ = median_seconds(lambda: cam(input_tensor=x, targets=targets), repeats=repeats, warmup=0)
    return seconds


@contextlib.contextmanager
def _tf32_convolutions(enabled: bool):
    """cuDNN convolutions in TF32 (PyTorch's default) or strict fp32, restored afterwards."""
    import torch

    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def time_eager_reference(model, layer_module, image: np.ndarray, target: int, repeats: int = 1,
                         cuda: bool = False) -> dict:
    """The eager PyTorch Fusion-CAM of the test suite in the authors' style: hooks, one masked forward per
    channel (chunk 1); on the GPU with cuda."""
    import torch

    from tests.support.torch_reference import reference_fusion_cam

    device = "cuda" if cuda else "cpu"

    def run():
        result = reference_fusion_cam(model, layer_module, torch.from_numpy(image), target, device=device, chunk=1)
        if cuda:
            torch.cuda.synchronize()
        return result

    seconds, runs = median_seconds(run, repeats=repeats, warmup=0)
    return {"fusion_cam_s": seconds, "runs": runs, "device": device, "masked_images_per_forward": 1}
