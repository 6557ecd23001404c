"""The arguments KServe's controller appends to a custom explainer's container, and what `fusioncam serve` does with
them.

KServe (`pkg/apis/serving/v1beta1/explainer_custom.go`, `CustomExplainer.GetContainer`) appends to the container's
args: `--model_name <InferenceService name>` and `--predictor_host <predictor service>.<namespace>` unless the args
already name them, always `--http_port 8080`, and `--workers <containerConcurrency>` when containerConcurrency is set
(unless given). Its Python ModelServer also reads `--grpc_port`. `fusioncam serve` accepts all of them:

- `--http_port` / `--grpc_port`: the same as `--http-port` / `--grpc-port` (the last one given wins).
- `--model_name NAME`: the name of the served model when `--name` is absent (KServe routes
  `/v1/models/<InferenceService name>:explain` to the explainer); with `--name` the `--name` wins, and a different
  `--model_name` is logged as a warning, since KServe's URL then names a model this server does not serve.
- `--predictor_host`: accepted and logged; fusioncam does not call the predictor (the bundle holds the classifier).
- `--workers N`: KServe's meaning, server processes (KServe passes containerConcurrency). fusioncam serves from one
  process, whose `--explainer-threads` Explainers and bounded queue (`--max-queue`) take the concurrent requests;
  N is logged, and is not a thread count. Explainer threads are `--explainer-threads`.

The environment: Knative sets `PORT` to the container port; it is the REST port when no `--http-port`/`--http_port`
is given (KServe's controller always passes `--http_port 8080`, the same port). Knative's K_SERVICE, K_REVISION and
K_CONFIGURATION need nothing.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..cli.shared import positive_int
from ..errors import InputError

DEFAULT_HTTP_PORT = 8080
PORT_ENV = "PORT"

def add_kserve_arguments(parser: argparse.ArgumentParser) -> None:
    """KServe's controller arguments that have no fusioncam spelling of their own (the ports are aliases of
    --http-port/--grpc-port, added by the caller)."""
    group = parser.add_argument_group("KServe controller arguments", "appended by KServe to a custom explainer's "
                                                                      "container; accepted so the pod starts")
    group.add_argument("--model_name", metavar="NAME",
                       help="the served model's name when --name is absent (KServe passes the InferenceService name)")
    group.add_argument("--predictor_host", metavar="HOST",
                       help="KServe's predictor address; not called (the bundle holds the classifier), only logged")
    group.add_argument("--workers", dest="kserve_workers", type=positive_int, metavar="N",
                       help="KServe's server processes (from containerConcurrency): fusioncam serves from one process "
                            "and logs N; Explainer threads are --explainer-threads")


@dataclass(frozen=True)
class KServeSettings:
    """What the controller's arguments and the environment decide: the served names and the REST port."""

    names: list[str] | None
    http_port: int
    notes: tuple[str, ...]
    warnings: tuple[str, ...] = ()


def resolve(names: Sequence[str] | None, model_name: str | None, models: Sequence[str], http_port: int | None,
            predictor_host: str | None, kserve_workers: int | None,
            environ: Mapping[str, str] = os.environ) -> KServeSettings:
    """The names to serve under and the REST port, from --name/--model_name and --http-port/$PORT; the notes are the
    log lines saying what was made of KServe's arguments (warnings: a name KServe routes to that is not served)."""
    notes: list[str] = []
    warnings: list[str] = []
    if names:
        if model_name and model_name not in names:
            warnings.append(f"--model_name {model_name} (KServe's InferenceService name) is not among the served names "
                         f"({', '.join(names)}): KServe's /v1/models/{model_name}:explain will answer 404")
    elif model_name:
        if len(models) != 1:
            raise InputError(f"--model_name {model_name} names one model, but {len(models)} are served: name each "
                             f"with --name")
        names = [model_name]
    if http_port is None:
        text = environ.get(PORT_ENV, "").strip()
        if text:
            if not text.isdigit() or not 1 <= int(text) <= 65535:
                raise InputError(f"${PORT_ENV} is {text!r}, not a TCP port (1-65535): fix it or pass --http-port")
            http_port = int(text)
            notes.append(f"REST port {http_port} from ${PORT_ENV}")
        else:
            http_port = DEFAULT_HTTP_PORT
    if predictor_host:
        notes.append(f"--predictor_host {predictor_host}: not called (the explainer runs its own copy of the "
                     f"classifier from the bundle)")
    if kserve_workers is not None:
        notes.append(f"--workers {kserve_workers} (KServe's server processes, from containerConcurrency): served "
                     f"from one process; requests are taken by --explainer-threads Explainers and a queue of "
                     f"--max-queue images")
    return KServeSettings(list(names) if names else None, http_port, tuple(notes), tuple(warnings))
