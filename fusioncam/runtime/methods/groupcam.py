"""Group-CAM: 32 consecutive channel groups as masks that blend the image into its blur, scored against the blur."""

from __future__ import annotations

from typing import Generator

from .engine import Engine, MethodOutput
from .probes import BlendProbe, Probe

GROUPS = 32  # torch.chunk semantics: groups of ceil(K / 32) channels, so fewer groups when K is not a multiple
BLUR_KSIZE = 51
BLUR_SIGMA = 50.0


def groupcam(engine: Engine) -> Generator[list[Probe], list, MethodOutput]:
    """L = norm(relu(sum_g d_g M_g)), d_g = relu(p(M_g x + (1 - M_g) x_b) - p(x_b)), M_g = norm(up(S_g)).

    A constant group map normalises to M_g = 0, whose blend is x_b itself: d_g = 0 exactly, so (with the
    engine's skip_constant) no forward runs for it.
    """
    kernels, xp = engine.kernels, engine.xp
    group_maps = kernels.group_activation_maps(engine.acts, engine.gradcam_weights, GROUPS)
    mins, maxs = kernels.upsampled_min_max(group_maps, engine.out_hw)
    active = (maxs > mins) if engine.skip_constant else xp.ones(mins.shape, dtype=bool)
    image_index, group_index = (index.astype(xp.int64) for index in xp.nonzero(active))
    blurred = kernels.gaussian_blurred_images(engine.images, BLUR_KSIZE, BLUR_SIGMA)
    blends = BlendProbe("groupcam/blends", blurred, group_maps, mins, maxs, image_index, group_index)
    baseline = BlendProbe("groupcam/blurred", blurred, group_maps, mins, maxs, engine.every_image,
                          xp.full(engine.every_image.shape, -1, dtype=xp.int64))
    p_blends, p_blurred = yield [blends, baseline]
    scores = xp.zeros(tuple(mins.shape), dtype=xp.float64)
    scores[image_index, group_index] = xp.maximum(p_blends - p_blurred[image_index], 0.0)
    summed = kernels.weighted_group_masks(group_maps, mins, maxs, scores, engine.out_hw)
    cam = kernels.normalize(xp.maximum(summed, xp.float32(0)))
    forwards = active.sum(axis=1).astype(xp.int64)
    return MethodOutput(cam, facts={"group_scores": scores, "group_forwards": forwards})
