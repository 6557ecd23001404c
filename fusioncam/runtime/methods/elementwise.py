"""HiResCAM, Grad-CAM element-wise and LayerCAM: position-wise products of A and G from the explain pass, summed over
channels, then norm(up(relu(.))) as every gradient method. No forward beyond the explain pass."""

from __future__ import annotations

from .engine import Engine, MethodOutput


def hirescam(engine: Engine) -> MethodOutput:
    """HiResCAM (Draelos & Carin, 2020): sum_k G_k * A_k, the gradient kept per position instead of averaged.
    pytorch-grad-cam computes the same."""
    return MethodOutput(engine.low_resolution_map(engine.kernels.hirescam_map(engine.acts, engine.grads)))


def gradcam_elementwise(engine: Engine) -> MethodOutput:
    """Grad-CAM element-wise (pytorch-grad-cam's GradCAMElementWise, its own method): sum_k relu(G_k * A_k)."""
    return MethodOutput(engine.low_resolution_map(engine.kernels.elementwise_gradcam_map(engine.acts, engine.grads)))


def layercam(engine: Engine) -> MethodOutput:
    """LayerCAM (Jiang et al., IEEE TIP 2021): sum_k relu(G_k) * A_k. The paper's optional tanh rescaling of shallow
    layers' maps for fusion across layers is not applied (nor is it by pytorch-grad-cam, whose map this equals)."""
    return MethodOutput(engine.low_resolution_map(engine.kernels.layercam_map(engine.acts, engine.grads)))
