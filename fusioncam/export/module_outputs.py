"""Whatever a PyTorch module returns (a tensor, a tuple, a dict, a Hugging Face ModelOutput), the tensor we need.

A target module may return a tuple (Hugging Face Swin layers, `nn.MultiheadAttention`) or a model-output object;
the CAM target is its first tensor unless the user names one. A model may return an object with `.logits`
(Hugging Face `ImageClassifierOutput`) or several outputs; the class scores are `.logits`, or the one named.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import LayerError, ModelLoadError


def _entries(value) -> list[tuple[str, object]]:
    """(key, item) pairs of a tuple/list (keys '0', '1', ...) or a mapping / ModelOutput (its keys)."""
    if isinstance(value, Mapping):
        return [(str(key), item) for key, item in value.items()]
    if isinstance(value, (tuple, list)):
        return [(str(index), item) for index, item in enumerate(value)]
    return []


def describe_value(value) -> str:
    """A short text of what a module returned: a tensor's shape, or the kinds of a container's entries."""
    import torch

    if isinstance(value, torch.Tensor):
        return f"a tensor {tuple(value.shape)}"
    entries = _entries(value)
    if entries:
        parts = [f"{key}: {tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__}"
                 for key, item in entries]
        return f"{type(value).__name__} ({', '.join(parts)})"
    return type(value).__name__


def pick_tensor(value, which: int | str | None, what: str):
    """The tensor `which` (an index or key) of `value`, or its first tensor when `which` is None.

    A LayerError names what was returned and how to choose when nothing fits."""
    import torch

    if isinstance(value, torch.Tensor) and which is None:
        return value
    entries = _entries(value)
    if which is None:
        for _key, item in entries:
            if isinstance(item, torch.Tensor):
                return item
    else:
        for key, item in entries:
            if key == str(which) and isinstance(item, torch.Tensor):
                return item
    raise LayerError(f"{what} returns {describe_value(value)}; "
                     + ("it holds no tensor" if which is None else f"it has no tensor entry {which!r}")
                     + ". Name the tensor to use (an index or key).")


def model_logits(value, output: int | str | None):
    """The class scores a model returned: the tensor itself, `.logits`, or the entry `output` names."""
    import torch

    if output is None:
        if isinstance(value, torch.Tensor):
            return value
        logits = getattr(value, "logits", None)
        if isinstance(logits, torch.Tensor):
            return logits
    try:
        return pick_tensor(value, output, "the model")
    except LayerError as exc:
        raise ModelLoadError(f"{exc} Pass output=NAME (CLI: --output NAME) to say which holds the class scores.") from None


def output_note(value, output: int | str | None) -> str:
    """Which of several model outputs gives the logits, for the export's description ('' for a single tensor)."""
    import torch

    if isinstance(value, torch.Tensor):
        return ""
    entries = [key for key, item in _entries(value) if isinstance(item, torch.Tensor)]
    if output is not None:
        return f"logits from model output {output!r} of {', '.join(entries)} (as requested)"
    if isinstance(getattr(value, "logits", None), torch.Tensor):
        return "logits from the model output's .logits"
    if len(entries) > 1:
        return (f"logits from model output {entries[0]!r} of {', '.join(entries)} "
                f"(the first; choose another with output=NAME)")
    return ""
