"""The type of every field of a bundle's manifest, checked before the manifest is used.

A manifest that parses as JSON can still hold `"class_names": 5` or `"input_size": "224"`; found by
fuzz/bundle_fuzz.py, these gave TypeError tracebacks from deep inside the fact checks. Each field is checked with
the argument checkers of fusioncam.arguments, and a wrong one is a BundleError naming the field.
"""

from __future__ import annotations

from typing import Any

from . import arguments
from .errors import BundleError, InputError


def _sha256_map(name: str, value: Any) -> dict:
    """File names to hex digests."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise arguments.rejected(name, value, "an object of file names to SHA-256 hex digests")
    return value


def _string(name: str, value: Any) -> str:
    """Any string, empty included (an empty manifest_sha256 gets its own message from the manifest reader)."""
    if not isinstance(value, str):
        raise arguments.rejected(name, value, "a string")
    return value


def _optional_object(name: str, value: Any) -> dict | None:
    """A JSON object (facts the runtime only reports) or null."""
    if value is not None and not isinstance(value, dict):
        raise arguments.rejected(name, value, "an object or null")
    return value


def _extra_layers(name: str, value: Any) -> list | None:
    """null, or a non-empty list of {"target_layer": str, "target_tensor": str, "channels": int,
    "feature_size": [h, w]}."""
    if value is None:
        return None
    keys = {"target_layer", "target_tensor", "channels", "feature_size"}
    if not isinstance(value, list) or not value or not all(isinstance(v, dict) and set(v) == keys for v in value):
        raise arguments.rejected(name, value, f"null or a non-empty list of objects with the fields {sorted(keys)}")
    for index, layer in enumerate(value):
        _string(f"{name}, layer {index}'s target_layer", layer["target_layer"])
        _string(f"{name}, layer {index}'s target_tensor", layer["target_tensor"])
        arguments.integer(f"{name}, layer {index}'s channels", layer["channels"], minimum=1)
        arguments.size_pair(f"{name}, layer {index}'s feature_size", layer["feature_size"])
    return value


def _optional_iou(name: str, value: Any) -> float | None:
    """null, or an IoU threshold in (0, 1]."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1):
        raise arguments.rejected(name, value, "null or a number in (0, 1]")
    return value


FIELD_CHECKS = {
    "input_size": lambda name, value: arguments.size_pair(name, value),
    "mean": lambda name, value: arguments.channel_stats(name, value),
    "std": lambda name, value: arguments.channel_stats(name, value, positive=True),
    "target_layer": _string,
    "target_tensor": _string,
    "channels": lambda name, value: arguments.integer(name, value, minimum=1),
    "feature_size": lambda name, value: arguments.size_pair(name, value),
    "num_classes": lambda name, value: arguments.integer(name, value, minimum=1),
    "opset": lambda name, value: arguments.integer(name, value, minimum=1),
    "source_sha256": _string,
    "source": _string,
    "class_names": lambda name, value: arguments.string_list(name, value),
    "files": _sha256_map,
    "task": _string,
    "output_size": lambda name, value: arguments.size_pair(name, value, allow_none=True),
    "source_precision": lambda name, value: _optional_object(name, value),
    "extra_layers": _extra_layers,
    "nms_iou_threshold": _optional_iou,
    "format_version": lambda name, value: arguments.integer(name, value),
    "manifest_sha256": _string,
}


def check_manifest_types(data: Any, origin: str) -> None:
    """Raise a BundleError naming the first field of the parsed manifest `data` whose value has the wrong type."""
    if not isinstance(data, dict):
        raise BundleError(f"{origin}: manifest is a JSON {type(data).__name__}, not an object; re-export the bundle")
    for field, check in FIELD_CHECKS.items():
        if field not in data:
            continue
        try:
            check(f"manifest field '{field}'", data[field])
        except InputError as exc:
            raise BundleError(f"{origin}: {exc}; re-export the bundle") from None
