"""pytorch-grad-cam's implementation of the benchmarked methods, timed on the same torch model, images and batch
sizes as fusioncam (side by side in one run); methods it lacks (Fusion-CAM, Group-CAM, Union-CAM) are listed."""

from __future__ import annotations

from typing import Callable

from .latency import latency_samples, latency_summary

# fusioncam method -> pytorch-grad-cam class name
GRAD_CAM_CLASSES = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
                    "scorecam": "ScoreCAM", "hirescam": "HiResCAM", "gradcam-elementwise": "GradCAMElementWise",
                    "layercam": "LayerCAM", "eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM",
                    "kpcacam": "KPCA_CAM"}


def compare_pytorch_grad_cam(torch_model, manifest, settings, say: Callable[[str], None]) -> dict:
    """{"version", "results": rows like fusioncam's (method, batch_size, p50/p90/p99, images/s), "not_in_pytorch_grad_cam"}
    or {"skipped": why} when pytorch-grad-cam is not installed or the model is not a torch model."""
    try:
        import pytorch_grad_cam
    except ImportError:
        return {"skipped": "pytorch-grad-cam is not installed (pip install 'fusioncam[bench]')"}
    if torch_model is None:
        return {"skipped": "the model is not a torch model (pytorch-grad-cam runs torch modules: name a model-zoo "
                           "model such as efficientnet_lite0, or pass torch_model= to run_bench)"}
    import torch

    from importlib.metadata import PackageNotFoundError, version

    from .suite import bench_images

    try:
        grad_cam_version = version("grad-cam")
    except PackageNotFoundError:
        grad_cam_version = getattr(pytorch_grad_cam, "__version__", "unknown")
    module, layer_module = torch_model
    module = module.eval()
    results, missing = [], [m for m in settings.methods if m not in GRAD_CAM_CLASSES]
    for method in (m for m in settings.methods if m in GRAD_CAM_CLASSES):
        cam_class = getattr(pytorch_grad_cam, GRAD_CAM_CLASSES[method])
        with cam_class(model=module, target_layers=[layer_module]) as cam:
            if hasattr(cam, "batch_size"):
                cam.batch_size = settings.scorer_batch or 16  # fusioncam's CPU scorer batch
            for n in settings.batch_sizes:
                say(f"pytorch-grad-cam {method} N={n}")
                x = torch.from_numpy(bench_images(manifest, int(n)))
                summary = latency_summary(latency_samples(lambda: cam(input_tensor=x, targets=None), settings.seconds,
                                                          min_runs=settings.min_runs))
                results.append({"method": method, "batch_size": int(n), **summary,
                                "images_per_s": int(n) / summary["p50_s"]})
    return {"version": grad_cam_version, "class": {m: GRAD_CAM_CLASSES[m] for m in settings.methods
                                                   if m in GRAD_CAM_CLASSES},
            "results": results, "not_in_pytorch_grad_cam": missing}
