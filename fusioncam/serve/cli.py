"""The `serve` subcommand: parses arguments and calls fusioncam.serve.serve (KServe is imported only when it runs)."""

from __future__ import annotations

import argparse
import logging

from ..cli.shared import DEVICES, positive_int
from .kserve_arguments import add_kserve_arguments

log = logging.getLogger("fusioncam.serve")


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of milliseconds, got {text!r}") from None
    if not 0.0 <= value <= 60_000.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 60000] milliseconds, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0.0 < value <= 86_400.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 86400] seconds, got {text!r}")
    return value


def _count_or_zero(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be 0 or a positive whole number, got {text!r}")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port (1-65535), got {text!r}")
    return int(text)


def cmd_serve(args: argparse.Namespace) -> int:
    """fusioncam serve MODEL...: serve bundles over KServe v1 and v2 (REST and gRPC) until stopped."""
    from . import ServeOptions, serve
    from .kserve_arguments import resolve

    logging.getLogger("fusioncam.serve").setLevel(logging.DEBUG if args.verbose else logging.INFO)  # start-up choices
    kserve = resolve(args.name, args.model_name, args.models, args.http_port, args.predictor_host, args.kserve_workers)
    for note in kserve.notes:
        log.info(note)
    for warning in kserve.warnings:
        log.warning(warning)
    options = ServeOptions(max_batch_size=args.max_batch_size, max_latency_ms=args.max_latency_ms,
                           max_queue=args.max_queue, workers=args.explainer_threads, max_instances=args.max_instances,
                           max_body_bytes=args.max_body_bytes, max_image_pixels=args.max_image_pixels,
                           timeout_s=args.timeout_s, gradient_workers=args.gradient_workers,
                           decode_budget_mib=args.decode_budget_mib, header_timeout_s=args.header_timeout_s,
                           body_timeout_s=args.body_timeout_s, max_connections=args.max_connections)
    serve(args.models, names=kserve.names, host=args.host, http_port=kserve.http_port, grpc_port=args.grpc_port,
          device=args.device, precision=args.precision, max_channels=args.fast, batch_size=args.batch,
          options=options, stop_after=args.stop_after, allow_model_control=args.allow_model_control,
          cpu_threads=args.cpu_threads)
    return 0


def add_subcommands(sub) -> None:
    """Register `fusioncam serve` on the parser's subparsers."""
    from ..runtime.channel_selection import DEFAULT_FAST_CHANNELS
    from ..runtime.explainer import PRECISIONS
    from .options import ServeOptions

    defaults = ServeOptions()
    serve = sub.add_parser("serve", help="serve bundles over KServe v1 and Open Inference Protocol v2 (REST and gRPC)")
    serve.add_argument("models", nargs="+", metavar="BUNDLE_OR_MODEL",
                       help="bundle directories, .onnx files, or efficientnet_lite0")
    serve.add_argument("--name", action="append", help="the name to serve a model under, once per model in order "
                                                       "(default: the bundle folder's or .onnx file's name)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--http-port", "--http_port", type=_port, dest="http_port",
                       help="REST port, v1 and v2 (default: $PORT when set, else 8080)")
    serve.add_argument("--grpc-port", "--grpc_port", type=_port, dest="grpc_port", default=8081,
                       help="gRPC port, v2 (default: 8081)")
    serve.add_argument("--device", choices=DEVICES, default="auto")
    serve.add_argument("--precision", choices=PRECISIONS, default="fp32")
    serve.add_argument("--fast", nargs="?", type=positive_int, const=DEFAULT_FAST_CHANNELS, metavar="K",
                       help=f"fast mode: score only the top-K channels (default K: {DEFAULT_FAST_CHANNELS})")
    serve.add_argument("--batch", type=positive_int, help="masked images per scorer run (default: 16 CPU, 256 GPU)")
    serve.add_argument("--max-batch-size", type=positive_int, default=defaults.max_batch_size,
                       help=f"images explained together by one call (default: {defaults.max_batch_size})")
    serve.add_argument("--max-latency-ms", type=_milliseconds, default=defaults.max_latency_ms,
                       help=f"how long a request waits for others to batch with (default: {defaults.max_latency_ms:g})")
    serve.add_argument("--max-queue", type=positive_int, default=defaults.max_queue,
                       help=f"images waiting per model before requests are refused with 429 (default: {defaults.max_queue})")
    serve.add_argument("--explainer-threads", type=positive_int, default=defaults.workers,
                       help="inference threads per model, each with its own Explainer (default: 1)")
    serve.add_argument("--cpu-threads", type=positive_int, metavar="N",
                       help="ONNX Runtime threads per session on the CPU (default: the cgroup's CPU quota, capped by "
                            "the CPUs this process may run on)")
    serve.add_argument("--allow-model-control", action="store_true",
                       help="allow POST /v2/repository/models/NAME/load|unload (default: refused with 403)")
    serve.add_argument("--max-instances", type=positive_int, default=defaults.max_instances,
                       help=f"images per request (default: {defaults.max_instances})")
    serve.add_argument("--max-body-bytes", type=positive_int, default=defaults.max_body_bytes,
                       help=f"request body size limit (default: {defaults.max_body_bytes})")
    serve.add_argument("--max-image-pixels", type=positive_int, default=defaults.max_image_pixels,
                       help=f"width x height limit of one image (default: {defaults.max_image_pixels})")
    serve.add_argument("--timeout-s", type=_seconds, default=defaults.timeout_s, metavar="SECONDS",
                       help=f"a request's deadline from its arrival: past it 504 / DEADLINE_EXCEEDED and its work is "
                            f"dropped; a request's 'timeout' parameter may shorten it (default: {defaults.timeout_s:g})")
    serve.add_argument("--gradient-workers", type=_count_or_zero, default=defaults.gradient_workers, metavar="N",
                       help="inference threads for requests of explain-pass-only methods (gradcam, gradcam++, ...) "
                            "and predictions, "
                            "so they never wait behind Score-CAM sweeps; 0: one lane for all "
                            f"(default: {defaults.gradient_workers})")
    serve.add_argument("--decode-budget-mib", type=positive_int, default=defaults.decode_budget_mib, metavar="MIB",
                       help="memory all requests' image decoding may hold at once; a decode waits for it, then 503 "
                            f"(default: {defaults.decode_budget_mib})")
    serve.add_argument("--header-timeout-s", type=_seconds, default=defaults.header_timeout_s, metavar="SECONDS",
                       help="a request's headers must arrive within this, else 408 and the connection is closed "
                            f"(default: {defaults.header_timeout_s:g})")
    serve.add_argument("--body-timeout-s", type=_seconds, default=defaults.body_timeout_s, metavar="SECONDS",
                       help="a request body that sends nothing for this long gets 408 and the connection is closed "
                            f"(default: {defaults.body_timeout_s:g})")
    serve.add_argument("--max-connections", type=positive_int, default=defaults.max_connections, metavar="N",
                       help=f"open HTTP connections; the next one gets 503 (default: {defaults.max_connections})")
    serve.add_argument("--stop-after", type=float, metavar="SECONDS", help="stop by itself after this many seconds")
    add_kserve_arguments(serve)
    serve.set_defaults(run=cmd_serve)
