"""Error types: every user-facing failure is one of these, with a message that says what, where and how to fix."""


class FusionCamError(Exception):
    """Base class of every error fusioncam raises on purpose."""


class ModelLoadError(FusionCamError):
    """A model file is missing, unreadable, not ONNX, or refers to data it may not read."""


class LayerError(FusionCamError):
    """A target layer is unknown, has the wrong rank, or does not reach the logits."""


class UnsupportedOpError(FusionCamError):
    """The backward pass meets an ONNX op that has no gradient rule."""


class BundleError(FusionCamError):
    """A bundle directory is missing a file, has an edited file, or a bad manifest."""


class InputError(FusionCamError):
    """Images or targets passed to an explainer have the wrong shape, dtype, size or range."""


class NonFiniteError(FusionCamError):
    """Logits, activations or gradients of an image contain NaN or infinity."""


class DeviceError(FusionCamError):
    """The requested device cannot be used (no GPU, no CUDA provider, no CuPy)."""


class OutputError(FusionCamError):
    """An output path would replace or delete something fusioncam did not write, or cannot be written."""


class ClosedError(FusionCamError):
    """An Explainer (or its scorer) was used after close() released its sessions and buffers."""
