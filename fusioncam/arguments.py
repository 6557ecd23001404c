"""Checks of the arguments of public entry points: one error policy for the Python API and the CLI.

Each checker takes the argument's name and value and returns the value in its plain form, or raises an
`InputError` that names the argument, shows the value (and its type) and says what is accepted. Entry points
call them first, so a wrong type never reaches NumPy, ONNX or ONNX Runtime and comes back as their traceback.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import InputError

__all__ = [
    "rejected", "integer", "number", "flag", "text", "size_pair", "path", "path_list", "string_list",
    "string_mapping", "channel_stats", "host_array", "image_array", "is_torch_tensor", "method_names", "callable_or_none",
    "explainer_arguments", "export_arguments",
]


def _shown(value: Any) -> str:
    """The value as an error message shows it: its repr (cut to 80 characters) and its type."""
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{shown} ({type(value).__name__})"


def rejected(name: str, value: Any, accepted: str) -> InputError:
    """The error for argument `name`: what was given, and what is accepted."""
    return InputError(f"{name} must be {accepted}; got {_shown(value)}")


def _is_integer(value: Any) -> bool:
    """A Python or NumPy integer, not a bool (True is not a batch size)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def integer(name: str, value: Any, minimum: int | None = None, maximum: int | None = None,
            allow_none: bool = False, accepted: str | None = None) -> int | None:
    """An int within [minimum, maximum] (None passes through when allow_none); `accepted` words the error."""
    if value is None and allow_none:
        return None
    low = "" if minimum is None else f" >= {minimum}"
    high = "" if maximum is None else f" <= {maximum}"
    accepted = accepted or (f"an integer{low}{' and' if low and high else ''}{high}" + (" or None" if allow_none else ""))
    if not _is_integer(value):
        raise rejected(name, value, accepted)
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise rejected(name, value, accepted)
    return value


def number(name: str, value: Any, minimum: float | None = None, maximum: float | None = None) -> float:
    """A finite real number (int or float, not bool or text) within [minimum, maximum]."""
    bounds = f" in [{minimum}, {maximum}]" if minimum is not None and maximum is not None else ""
    accepted = f"a finite number{bounds}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise rejected(name, value, accepted)
    value = float(value)
    if not math.isfinite(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise rejected(name, value, accepted)
    return value


def flag(name: str, value: Any) -> bool:
    """True or False (a NumPy bool too): 0, 1 and strings are refused, they usually mean a mixed-up argument."""
    if not isinstance(value, (bool, np.bool_)):
        raise rejected(name, value, "True or False")
    return bool(value)


def text(name: str, value: Any, choices: Sequence[str] | None = None, allow_none: bool = False) -> str | None:
    """A string, one of `choices` when given (None passes through when allow_none)."""
    if value is None and allow_none:
        return None
    accepted = f"one of {', '.join(repr(c) for c in choices)}" if choices else "a string"
    if allow_none:
        accepted += " or None"
    if not isinstance(value, str) or not value or (choices is not None and value not in choices):
        raise rejected(name, value, accepted)
    return value


def size_pair(name: str, value: Any, allow_none: bool = False) -> tuple[int, int] | None:
    """(H, W): two positive integers in a tuple or list (None passes through when allow_none)."""
    if value is None and allow_none:
        return None
    accepted = "(H, W), two positive integers" + (" or None" if allow_none else "")
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise rejected(name, value, accepted)
    if not all(_is_integer(v) and int(v) > 0 for v in value):
        raise rejected(name, value, accepted)
    return int(value[0]), int(value[1])


def path(name: str, value: Any) -> str | os.PathLike:
    """A file system path: a non-empty str or an os.PathLike (pathlib.Path)."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, os.PathLike):
        return value
    raise rejected(name, value, "a path (a non-empty str or pathlib.Path)")


def path_list(name: str, value: Any) -> list[str | os.PathLike]:
    """A non-empty list of paths; one path on its own (a str or Path) is taken as a list of one."""
    if isinstance(value, (str, os.PathLike)):
        return [path(name, value)]
    if isinstance(value, (bytes, Mapping)) or not isinstance(value, (Sequence, np.ndarray)) or len(value) == 0:
        raise rejected(name, value, "a path or a non-empty list of paths")
    return [path(f"{name}[{i}]", item) for i, item in enumerate(value)]


def string_list(name: str, value: Any, allow_none: bool = True) -> list[str] | None:
    """A list of strings (e.g. class names), None passing through when allow_none."""
    if value is None and allow_none:
        return None
    accepted = "a list of strings" + (" or None" if allow_none else "")
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise rejected(name, value, accepted)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise rejected(f"{name}[{i}]", item, "a string")
    return list(value)


def string_mapping(name: str, value: Any) -> dict[str, str]:
    """A mapping of option names to values (None is an empty one); keys must be strings."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise rejected(name, value, "a dict of option names (str) to values, or None")
    return {key: str(item) for key, item in value.items()}


def channel_stats(name: str, value: Any, positive: bool = False) -> tuple[float, float, float]:
    """Three finite numbers, one per R, G, B channel (all > 0 when positive: a std)."""
    accepted = "three finite numbers (R, G, B)" + (", all > 0" if positive else "")
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)) or len(value) != 3:
        raise rejected(name, value, accepted)
    items = []
    for item in value:
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, numbers.Real) or not math.isfinite(float(item)):
            raise rejected(name, value, accepted)
        if positive and float(item) <= 0:
            raise rejected(name, value, accepted)
        items.append(float(item))
    return items[0], items[1], items[2]


def is_torch_tensor(value: Any) -> bool:
    """A torch.Tensor, recognised without importing torch (which may not be installed)."""
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach")


def host_array(name: str, value: Any) -> Any:
    """A NumPy array for a torch tensor (any device, with or without grad: .detach().cpu().numpy()); NumPy and CuPy
    arrays as given; nested lists as NumPy. Anything else (None, a string, a dict) is an InputError."""
    if is_torch_tensor(value):
        tensor = value.detach()
        if getattr(tensor, "dtype", None) is not None and str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()  # NumPy has no bfloat16
        return tensor.cpu().numpy()
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return value
    if isinstance(value, (list, tuple)):
        try:
            return np.asarray(value)
        except (ValueError, TypeError):
            raise rejected(name, value, "an array (NumPy, CuPy or torch)") from None
    raise rejected(name, value, "an array (NumPy, CuPy or torch)")


def image_array(name: str, value: Any) -> Any:
    """Preprocessed images as an array: host_array, and a clear error for object or string arrays."""
    array = host_array(name, value)
    if getattr(array, "dtype", None) is not None and np.dtype(array.dtype).kind in "OSUV":
        raise rejected(name, value, "a float32 array [N, 3, H, W]")
    return array


def method_names(name: str, value: Any) -> str | list[str]:
    """A method name, several in one comma-separated string ("gradcam,fusion"), or a sequence of names (their
    validity, and that there is one, is checked by the method registry, which names the valid ones)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, Mapping)) or not isinstance(value, Sequence):
        from .runtime.methods.registry import METHODS

        raise rejected(name, value, f"a method name or a list of them ({', '.join(METHODS)})")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise rejected(f"{name}[{i}]", item, "a method name (str)")
    return list(value)


def callable_or_none(name: str, value: Any) -> Any:
    """A function (or any callable) or None."""
    if value is not None and not callable(value):
        raise rejected(name, value, "a callable or None")
    return value


def explainer_arguments(bundle: Any, device: Any, batch_size: Any, precision: Any, theta: Any,
                        skip_constant_channels: Any, max_channels: Any, cuda_options: Any) -> None:
    """The checks of `Explainer(...)`'s arguments' types and ranges (the bundle's own contents are checked when loaded)."""
    from .bundle import Bundle

    if not isinstance(bundle, Bundle) and not (isinstance(bundle, (str, os.PathLike)) and bundle != ""):
        raise rejected("bundle", bundle, "a bundle directory (str or pathlib.Path) or a fusioncam Bundle")
    text("device", device)
    integer("batch_size", batch_size, minimum=1, allow_none=True,
            accepted="a positive number of masked images per scorer run (an integer >= 1) or None")
    text("precision", precision)
    number("theta", theta, 0.0, 100.0)
    flag("skip_constant_channels", skip_constant_channels)
    integer("max_channels", max_channels, minimum=1, allow_none=True,
            accepted="a positive number of channels (an integer >= 1), or None for all")
    string_mapping("cuda_options", cuda_options)


def export_arguments(out: Any, input_size: Any, mean: Any, std: Any, class_names: Any, fp16_scorer: Any,
                     input_size_optional: bool = False) -> tuple[int, int] | None:
    """The checks shared by export_torch and export_onnx; returns input_size as (H, W) (or None when optional).

    An input size too large for this machine's free memory is refused here, before PyTorch or ONNX allocate it."""
    from .memory_budget import check_input_size_fits

    path("out", out)
    size = size_pair("input_size", input_size, allow_none=input_size_optional)
    if size is not None:
        check_input_size_fits(size)
    channel_stats("mean", mean)
    channel_stats("std", std, positive=True)
    string_list("class_names", class_names)
    flag("fp16_scorer", fp16_scorer)
    return size
