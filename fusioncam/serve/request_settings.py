"""Per-request parameters shared by the v1 and v2 protocols: methods, targets, top-k, and what comes back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..bundle import Manifest
from ..errors import InputError
from ..runtime.input_checks import _one_target
from ..runtime.methods import check_methods
from ..report.pictures import colormap_code
from .request_errors import BadRequest

RETURN_KINDS = ("maps", "overlays")


@dataclass(frozen=True)
class RequestSettings:
    """What one request asks for. methods = () asks for predictions only."""

    methods: tuple[str, ...]
    top_k: int
    returns: tuple[str, ...] = ("maps",)
    colormap: str = "jet"
    alpha: float = 0.5
    timeout_s: float | None = None  # the request's own deadline in seconds (None: the server's --timeout-s)


def methods_of(value: Any) -> tuple[str, ...]:
    """methods: a list of names or one comma-separated string (any of the seven), in canonical order."""
    if isinstance(value, str):
        names = [name.strip() for name in value.split(",") if name.strip()]
    elif isinstance(value, (list, tuple)) and all(isinstance(name, str) for name in value):
        names = list(value)
    else:
        raise BadRequest(f"parameter 'methods' must be a list of method names or a comma-separated string; got {value!r}")
    try:
        return check_methods(names)
    except InputError as exc:
        raise BadRequest(f"parameter 'methods': {exc}") from None


def top_k_of(value: Any, default: int, num_classes: int) -> int:
    """top_k: how many classes the predictions list (1..number of classes; capped at the number of classes)."""
    if value is None:
        return min(default, num_classes)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"parameter 'top_k' must be a positive integer; got {value!r}")
    return min(int(value), num_classes)


def returns_of(value: Any) -> tuple[str, ...]:
    """return: which explanation forms come back, any of 'maps' (float arrays) and 'overlays' (PNG, base64)."""
    if value is None:
        return ("maps",)
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names or any(name not in RETURN_KINDS for name in names):
        raise BadRequest(f"parameter 'return' must be one or both of {', '.join(RETURN_KINDS)}; got {value!r}")
    return tuple(kind for kind in RETURN_KINDS if kind in names)


TIMEOUT_UNITS = {"s": (1.0, "seconds"), "us": (1e-6, "microseconds")}


def timeout_of(value: Any, unit: str = "s") -> float | None:
    """timeout: how long the client waits for the answer, in seconds (v1) or microseconds (v2, as Triton's
    `timeout` parameter); returned in seconds. It shortens the server's --timeout-s, never extends it."""
    if value is None:
        return None
    scale, name = TIMEOUT_UNITS[unit]
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not 0.0 < float(value) * scale <= 86_400.0):
        raise BadRequest(f"parameter 'timeout' is the {name} this request may take, a number in "
                         f"(0, {86_400.0 / scale:.0f}]; got {value!r}")
    return float(value) * scale


def target_of(value: Any, manifest: Manifest, label: str) -> int:
    """A target: None or "top" (the top class), a class index (negative: from the end, -1 the last class), or a
    class name; returned resolved, -1 (ARGMAX) standing for the top class."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        return _one_target(value, manifest.num_classes, manifest.class_names, label)
    except InputError as exc:
        raise BadRequest(str(exc)) from None


def settings_of(parameters: Mapping[str, Any] | None, default_methods: tuple[str, ...], default_top_k: int,
                num_classes: int, timeout_unit: str = "s") -> RequestSettings:
    """The request's settings from its parameters; unknown parameter names are refused (a typo is not ignored).
    timeout_unit: "s" (v1: seconds) or "us" (v2: microseconds, as Triton's protocol and tritonclient's timeout=)."""
    parameters = dict(parameters or {})
    known = {"methods", "target", "region", "top_k", "return", "colormap", "alpha", "binary_data_output",
             "timeout"}
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise BadRequest(f"unknown parameter(s) {', '.join(unknown)}; this server takes {', '.join(sorted(known))}")
    methods = methods_of(parameters["methods"]) if parameters.get("methods") is not None else default_methods
    colormap = parameters.get("colormap", "jet")
    try:
        colormap_code(colormap)
    except InputError as exc:
        raise BadRequest(f"parameter 'colormap': {exc}") from None
    alpha = parameters.get("alpha", 0.5)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise BadRequest(f"parameter 'alpha' is the heatmap's weight in the overlays, a number in [0, 1]; got {alpha!r}")
    return RequestSettings(methods=methods, top_k=top_k_of(parameters.get("top_k"), default_top_k, num_classes),
                           returns=returns_of(parameters.get("return")), colormap=str(colormap), alpha=float(alpha),
                           timeout_s=timeout_of(parameters.get("timeout"), timeout_unit))


__all__ = ["RETURN_KINDS", "RequestSettings", "methods_of", "returns_of", "settings_of", "target_of", "timeout_of",
           "top_k_of"]
