"""A layer's map scaled as pytorch-grad-cam scales it before averaging several target layers, from fusioncam's map.

The arithmetic lives in the runtime (runtime/layer_aggregation.py, where an Explainer on a several-layer bundle
aggregates its layers' maps); these are its names as the drop-in module has used them.
"""

from __future__ import annotations

from ..runtime.layer_aggregation import LOW_RESOLUTION_FORM, scaled_before_upsampling, upsampling_matrices

__all__ = ["LOW_RESOLUTION_FORM", "scaled_before_upsampling", "upsampling_matrices"]
