"""Explaining whole datasets on Ray Data: many workers (one `Explainer` each), streaming reads, Parquet out, resume.

    from fusioncam.dataset import explain_dataset
    explain_dataset("photos/", "efficientnet_lite0", out="explained", methods=("fusion",), workers=2)

Ray is an optional extra (`pip install 'fusioncam[dataset]'`); importing this package does not import Ray.
"""

from __future__ import annotations

from .output import read_results
from .pipeline import DatasetRun, explain_dataset
from .rows import tensor_maps

__all__ = ["DatasetRun", "explain_dataset", "read_results", "tensor_maps"]
