"""pytorch-grad-cam's API on fusioncam: change `from pytorch_grad_cam import GradCAM` to
`from fusioncam.pytorch_grad_cam import GradCAM` (and `pytorch_grad_cam.utils...` to
`fusioncam.pytorch_grad_cam.utils...`). See cam_classes.py for what each class runs."""

from .cam_classes import (BaseCAM, AblationCAM, EigenCAM, EigenGradCAM, FinerCAM, FullGrad, FusionCAM, GradCAM,
                          GradCAMElementWise, GradCAMPlusPlus, GroupCAM, HiResCAM, KPCA_CAM, LayerCAM,
                          MethodNotAvailable, ReciproCAM, ScoreCAM, ShapleyCAM, UnionCAM, XGradCAM, CLASS_METHODS)

__all__ = ["BaseCAM", "AblationCAM", "EigenCAM", "EigenGradCAM", "FinerCAM", "FullGrad", "FusionCAM", "GradCAM",
           "GradCAMElementWise", "GradCAMPlusPlus", "GroupCAM", "HiResCAM", "KPCA_CAM", "LayerCAM",
           "MethodNotAvailable", "ReciproCAM", "ScoreCAM", "ShapleyCAM", "UnionCAM", "XGradCAM", "CLASS_METHODS"]
