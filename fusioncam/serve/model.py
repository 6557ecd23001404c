"""`FusionCamModel`: a kserve.Model that predicts and explains with one fusioncam bundle, behind KServe's protocols.

    import kserve
    from fusioncam.serve import FusionCamModel

    model = FusionCamModel("resnet50", "resnet50.bundle")   # a bundle directory, an .onnx file or efficientnet_lite0
    model.load()                                            # starts the inference workers (one Explainer each)
    kserve.ModelServer().start([model])                     # KServe binds every interface; fusioncam.serve binds 127.0.0.1

KServe owns the routes (v1 `:predict`/`:explain`, v2 `/infer` over REST and gRPC, health, metadata, /metrics);
this class turns their payloads into checked images (decoding.py), queues them for the dynamic batcher
(batching.py) and builds the answers (v1.py, v2_tensors.py). Decoding runs in a thread of the event loop's
executor and inference in the batcher's worker threads, so the event loop only routes.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Callable

import kserve
from kserve.protocol.infer_type import InferRequest, InferResponse

from ..bundle import Bundle
from ..bundle_cache import bundle_for
from ..errors import InputError, ModelLoadError
from ..runtime import Explainer
from ..runtime.cpu_backend import CPU_SPINNING_ENV
from ..tasks.payloads import payloads_for
from . import metrics
from .batching import DynamicBatcher, Job, JobResult
from .deadlines import GRPC_DEADLINE, DeadlineExceeded, Ticket, deadline_of, remaining
from .decoding import ImageDecoder
from .pixel_budget import MemoryExhausted, admission_deadline, shared_budget
from .model_statistics import recorded
from .options import ServeOptions
from .request_errors import BadRequest, ServerBusy
from .served_layers import TARGET_LAYERS, check_served_methods
from .v1 import ParsedRequest, parse_v1, v1_response
from .v2_tensors import input_types, output_types, parse_v2, v2_response


class FusionCamModel(kserve.Model):
    """Predictions and CAM explanations of one bundle, dynamically batched over `options.workers` Explainers.

    bundle: a Bundle, a bundle directory, an .onnx file (exported once into the cache) or 'efficientnet_lite0'.
    device, precision, max_channels (fast mode), batch_size (masked images per scorer run): as for Explainer.
    """

    def __init__(self, name: str, bundle: str | os.PathLike | Bundle, device: str = "auto", precision: str = "fp32",
                 max_channels: int | None = None, batch_size: int | None = None,
                 options: ServeOptions | None = None) -> None:
        super().__init__(name)
        self.bundle = bundle if isinstance(bundle, Bundle) else bundle_for(bundle)
        manifest = self.bundle.manifest
        try:
            payloads_for(manifest)  # the task's request and answer encodings (fusioncam/tasks/*_payloads.py)
        except InputError as exc:
            raise ModelLoadError(f"bundle {self.bundle.path}: {exc}") from None
        self.options = options or ServeOptions()
        self.decoder = ImageDecoder(manifest, self.options.max_image_pixels,
                                    shared_budget(self.options.decode_budget_mib))
        self._explainer_options = {"device": device, "precision": precision, "max_channels": max_channels,
                                   "batch_size": batch_size}
        self.batcher: DynamicBatcher | None = None

    def load(self) -> bool:
        """Create the Explainers (one per worker) and start their threads; ready afterwards.

        Unless FUSIONCAM_CPU_SPINNING is set, it is set to 0 in this process first: ONNX Runtime's CPU threads then
        sleep between ops instead of spinning, and the cores go to decoding and answering requests (measured on the
        2-core machine: the server's CPU time per Grad-CAM request about halved, its throughput up; README, Serving)."""
        os.environ.setdefault(CPU_SPINNING_ENV, "0")
        if self.batcher is None:
            options = self.options
            self.batcher = DynamicBatcher(self.name, lambda: Explainer(self.bundle, **self._explainer_options),
                                          options.max_batch_size, options.max_latency_ms, options.max_queue,
                                          options.workers, options.gradient_workers)
        self.ready = True
        return self.ready

    def stop(self) -> None:
        """Finish the queued requests, then release the Explainers."""
        self.ready = False
        if self.batcher is not None:
            self.batcher.close()
            self.batcher = None

    def get_input_types(self) -> list[dict]:
        return input_types(self.bundle.manifest)

    def get_output_types(self) -> list[dict]:
        return output_types(self.bundle.manifest)

    async def predict(self, payload: dict | InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> dict | InferResponse:
        """v1 `:predict` (a dict) or v2 `/infer` (an InferRequest, REST or gRPC)."""
        metrics.REQUEST_VERB.set("infer" if isinstance(payload, InferRequest) else "predict")  # the metrics' label
        if isinstance(payload, InferRequest):
            return await self._answer_v2(payload)
        return await self._answer_v1(payload, "predict")

    async def explain(self, payload: dict, headers: dict[str, str] | None = None) -> dict:
        """v1 `:explain`: the predictions and the requested methods' maps and/or overlays."""
        metrics.REQUEST_VERB.set("explain")  # the metrics' label of a request that fails before its methods are read
        if isinstance(payload, InferRequest):
            raise BadRequest("explanations over v2 come from /v2/models/{name}/infer: name the methods in outputs")
        return await self._answer_v1(payload, "explain")

    async def _answer_v1(self, payload: Any, verb: str) -> dict:
        manifest = self.bundle.manifest
        parsed, result = await recorded(self.name, self._run(lambda: parse_v1(payload, verb, self.decoder, manifest,
                                                                              self.options)))
        answer = await asyncio.to_thread(v1_response, parsed, result, manifest, verb)
        if verb == "explain":  # the maps are each method's over every target layer (aggregated when several)
            answer[TARGET_LAYERS] = list(self.bundle.layer_names)
        return answer

    async def _answer_v2(self, request: InferRequest) -> InferResponse:
        manifest = self.bundle.manifest
        outputs: list = []

        def parse() -> ParsedRequest:
            parsed, names = parse_v2(request, self.decoder, manifest, self.options)
            outputs.extend(names)
            return parsed

        parsed, result = await recorded(self.name, self._run(parse))
        return v2_response(request, parsed, result, tuple(outputs), manifest, self.name)

    async def _run(self, parse: Callable[[], ParsedRequest]) -> tuple[ParsedRequest, JobResult]:
        """Decode, check, stack and queue in a thread of the loop's executor (not on the event loop), then wait for
        the batch until the request's deadline (deadlines.py); count the outcome and latency. A request cancelled
        here (its client disconnected, its gRPC deadline passed) abandons its job: it leaves the queue uncomputed."""
        started = time.monotonic()
        methods: tuple[str, ...] = ()
        ticket = Ticket()
        try:
            parsed, job, why = await asyncio.get_running_loop().run_in_executor(
                None, self._parse_and_queue, parse, started, GRPC_DEADLINE.get(), ticket)
            methods = parsed.settings.methods
            result = await self._answer(job, why)
        except asyncio.CancelledError:
            self._withdraw(ticket.cancel())
            metrics.count_request(self.name, methods, "cancelled")
            raise
        except DeadlineExceeded:
            metrics.count_request(self.name, methods, "deadline")
            raise
        except (MemoryError, MemoryExhausted) as exc:
            metrics.count_request(self.name, methods, "out_of_memory")
            if isinstance(exc, MemoryExhausted):
                raise
            raise MemoryExhausted(f"model {self.name}: the server ran out of memory for this request (not a problem "
                                  f"of the request); retry later or on another replica") from None
        except BadRequest:
            metrics.count_request(self.name, methods, "bad_request")
            raise
        except ServerBusy:
            metrics.count_request(self.name, methods, "busy")
            raise
        except Exception:
            metrics.count_request(self.name, methods, "error")
            raise
        metrics.count_request(self.name, methods, "ok", time.monotonic() - started)
        return parsed, result

    async def _answer(self, job: Job, why: str) -> JobResult:
        """The job's result, or DeadlineExceeded at its deadline (the job then leaves the queue, or its batch stops
        at the next scorer batch once no other request waits for it)."""
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(job.future)), remaining(job.deadline))
        except (TimeoutError, DeadlineExceeded):  # DeadlineExceeded: the worker saw the deadline pass first
            self._withdraw(job)
            raise DeadlineExceeded(f"model {self.name}: no answer within {why}; the request was dropped (give it more "
                                   f"time with the timeout parameter or --timeout-s, or ask for cheaper methods: "
                                   f"gradcam, gradcam++ or xgradcam)") from None

    def _withdraw(self, job: Job | None) -> None:
        batcher = self.batcher
        if job is not None:
            job.abandoned = True
            if batcher is not None:
                batcher.withdraw(job)

    def _parse_and_queue(self, parse: Callable[[], ParsedRequest], started: float, grpc_deadline: float | None,
                         ticket: Ticket) -> tuple[ParsedRequest, Job, str]:
        """The request parsed into one job (decodes wait for the memory budget until the server's deadline) and
        submitted to the batcher with its deadline: all of it in the calling (pool) thread."""
        with admission_deadline(deadline_of(started, self.options.timeout_s, None, grpc_deadline)[0]):
            parsed = parse()
        check_served_methods(self.bundle, self.name, parsed.settings.methods)  # a several-layer bundle's refusals
        deadline, why = deadline_of(started, self.options.timeout_s, parsed.settings.timeout_s, grpc_deadline)
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(f"model {self.name}: {why} passed while the request was decoded; it was dropped")
        batcher = self.batcher
        if batcher is None:
            raise ServerBusy(f"model {self.name} is not loaded (call load(), or it is stopping)")
        job = Job(images=parsed.stacked(), targets=parsed.targets, methods=parsed.settings.methods,
                  regions=parsed.regions, enqueued=time.monotonic(), deadline=deadline)
        ticket.attach(job)
        batcher.submit(job)
        return parsed, job, why
