"""The bundle's head graph (activations -> logits) in an ONNX Runtime session, opened on first use.

It runs on the CPU provider whatever the Explainer's device: rows come from and go back to the backend's arrays
through the scorer's host copies (on the CPU backend no copy is made)."""

from __future__ import annotations

import threading

import numpy as np

from ..bundle import Bundle, head_graph_file
from ..errors import BundleError
from ..graph_names import ACTIVATIONS, LOGITS


class HeadSession:
    """The head graph of one bundle; `logits(rows)` runs it. Opened lazily: bundles without one still explain."""

    def __init__(self, bundle: Bundle, layer: int = 0) -> None:
        self._bundle = bundle
        self._layer = layer  # which target layer's head graph (a several-layer bundle has one per layer)
        self._session = None
        self._lock = threading.Lock()

    def _opened(self):
        """The session, opened now if needed; a BundleError says how to get a head graph when the bundle has none."""
        with self._lock:
            if self._session is None:
                path = self._bundle.head_path_of(self._layer)
                if path is None:
                    raise BundleError(
                        f"bundle {self._bundle.path} has no head graph ({head_graph_file(self._layer)}, of target "
                        f"layer '{self._bundle.layer_names[self._layer]}'), which AblationCAM and ReciproCAM "
                        f"run: it was exported before head graphs existed (re-export it with this fusioncam), or its "
                        f"target layer's output is not the only path from the image to the logits (export said so; "
                        f"re-export at a later layer, e.g. the last block of the last stage)")
                from .cpu_backend import cpu_session

                self._session = cpu_session(path)
            return self._session

    def logits(self, rows: np.ndarray) -> np.ndarray:
        """float32 [rows, classes]: the head's logits for activations [rows, K, h, w] (float32, host)."""
        return self._opened().run([LOGITS], {ACTIVATIONS: rows})[0]

    def close(self) -> None:
        """Drop the session (if opened)."""
        with self._lock:
            self._session = None
