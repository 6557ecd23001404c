"""Per-output views of a served model, for Triton tools that want one image input and one output.

`NAME.probabilities` and `NAME.<method>` (each method the bundle answers: served_layers.py; a several-layer
bundle's maps are aggregated over its layers) are models of their own over v2 (REST and gRPC): one input `image`, UINT8 RGB pixels [N, H, W, 3] (FORMAT_NHWC at
the model's input size; another size is resized like a file), and one output: `probabilities` FP32 [N, classes]
(every class, in class order: Triton's classification extension, `class_count`, picks the top ones) or the
method's map FP32 [N, H, W]. Parameters (target, top_k) are the model's. Triton's unmodified image_client.py
runs against `NAME.probabilities`.

A view is resolved on demand from its model's name (MethodViewRepository.get_model); it is not listed in
`/v2/models` (the served models), and it shares its model's queue, batches, readiness and statistics.
"""

from __future__ import annotations

from typing import Any

import kserve
from kserve.model_repository import ModelRepository
from kserve.protocol.infer_type import InferRequest, InferResponse, RequestedOutput

from .model import FusionCamModel
from .model_statistics import recorded
from .request_errors import BadRequest
from .served_layers import served_methods
from .v1 import ParsedRequest
from .v2_tensors import INPUT_NAMES, parse_v2, v2_response

SEPARATOR = "."
VIEW_INPUT = "image"


def view_outputs(model: FusionCamModel) -> tuple[str, ...]:
    """The views a served model has: probabilities and each method its bundle answers (served_layers.py)."""
    return ("probabilities", *served_methods(model.bundle.manifest))


class MethodView(kserve.Model):
    """One output of a FusionCamModel under the name `model.output`, taking one UINT8 image input."""

    def __init__(self, base: FusionCamModel, output: str) -> None:
        super().__init__(f"{base.name}{SEPARATOR}{output}")
        self.base, self.output = base, output
        self.ready = True

    async def healthy(self) -> bool:
        return bool(self.base.ready)

    def load(self) -> bool:
        """A view never loads its model (KServe calls load() on a model that is not ready): loading and unloading
        are the model's own, so a view of a stopped or unloaded model stays unready."""
        return bool(self.base.ready)

    def get_input_types(self) -> list[dict]:
        height, width = self.base.bundle.manifest.input_size
        return [{"name": VIEW_INPUT, "datatype": "UINT8", "shape": [-1, height, width, 3]}]

    def get_output_types(self) -> list[dict]:
        manifest = self.base.bundle.manifest
        if self.output == "probabilities":
            return [{"name": "probabilities", "datatype": "FP32", "shape": [-1, manifest.num_classes]}]
        height, width = manifest.input_size
        return [{"name": self.output, "datatype": "FP32", "shape": [-1, height, width]}]

    async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> InferResponse:
        if not isinstance(payload, InferRequest):
            raise BadRequest(f"{self.name} is a v2 view (one input '{VIEW_INPUT}', one output '{self.output}'); "
                             f"send v1 requests to {self.base.name}")
        request = self._as_model_request(payload)
        manifest = self.base.bundle.manifest
        outputs: list[str] = []

        def parse() -> ParsedRequest:
            parsed, names = parse_v2(request, self.base.decoder, manifest, self.base.options)
            outputs.extend(names)
            return parsed

        parsed, result = await recorded(self.base.name, self.base._run(parse))
        return v2_response(request, parsed, result, tuple(outputs), manifest, self.name, all_probabilities=True)

    async def explain(self, payload: Any, headers: dict[str, str] | None = None) -> dict:
        raise BadRequest(f"{self.name} is a v2 view: send :explain to {self.base.name}")

    def _as_model_request(self, request: InferRequest) -> InferRequest:
        """The view's request as one for its model: the `image` input read as image_rgb, the view's output asked."""
        names = [tensor.name for tensor in request.inputs]
        if names != [VIEW_INPUT]:
            raise BadRequest(f"{self.name} takes one input, '{VIEW_INPUT}' (UINT8 [N, H, W, 3]); got "
                             f"{', '.join(repr(n) for n in names) or 'none'}")
        tensor = request.inputs[0]
        if tensor.datatype != "UINT8":
            raise BadRequest(f"input '{VIEW_INPUT}' of {self.name} is UINT8 RGB pixels [N, H, W, 3]; got datatype "
                             f"{tensor.datatype}")
        other = [output.name for output in request.request_outputs or [] if output.name != self.output]
        if other:
            raise BadRequest(f"{self.name} has one output, '{self.output}'; got {', '.join(other)} (ask "
                             f"{self.base.name} for the others)")
        tensor._name = INPUT_NAMES["UINT8"]
        if not request.request_outputs:
            request.request_outputs = [RequestedOutput(name=self.output, parameters={})]
        return request


class MethodViewRepository(ModelRepository):
    """KServe's model repository, which also resolves `NAME.output` to a view of the served model NAME."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._views: dict[str, MethodView] = {}

    def get_model(self, name: str):
        model = super().get_model(name)
        if model is not None or SEPARATOR not in name:
            return model
        base_name, _, output = name.rpartition(SEPARATOR)
        base = super().get_model(base_name)
        if not isinstance(base, FusionCamModel) or output not in view_outputs(base) \
                or base.bundle.manifest.task != "classification":
            return None
        view = self._views.get(name)
        if view is None or view.base is not base:
            view = self._views[name] = MethodView(base, output)
        return view

    def view_names(self) -> list[str]:
        """Every view of the served classification models, for the repository index."""
        return [f"{name}{SEPARATOR}{output}" for name, model in self.get_models().items()
                if isinstance(model, FusionCamModel) and model.bundle.manifest.task == "classification"
                for output in view_outputs(model)]
