"""Model versions as Triton's clients name them: every served model has one version, "1"; a request naming it, or
no version, reaches the model; any other version is a clear 404 / NOT_FOUND (REST and gRPC alike)."""

from __future__ import annotations

from kserve.errors import ModelNotFound

from .triton_config import SERVED_VERSION


class ModelVersionNotFound(ModelNotFound):
    """A version other than the one served (KServe answers ModelNotFound with HTTP 404 and gRPC NOT_FOUND)."""

    def __init__(self, model_name: str, version: str) -> None:
        super().__init__(model_name)
        self.reason = (f"model {model_name} has no version {version!r}: fusioncam serves one version of each model, "
                       f"\"{SERVED_VERSION}\"; name that version or leave the version out")


def check_version(model_name: str, version: str | None) -> None:
    """ModelVersionNotFound unless `version` is empty or the served version."""
    if version not in (None, "", SERVED_VERSION):
        raise ModelVersionNotFound(model_name, version)
