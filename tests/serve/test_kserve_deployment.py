"""`fusioncam serve` deployed as KServe deploys a custom explainer, and the server's start-up, readiness and logging.

The command lines are derived, not written by hand: the image's ENTRYPOINT (deploy/Dockerfile, Dockerfile.gpu), the
manifest's container args (deploy/inferenceservice*.yaml) and the arguments KServe's controller appends
(`controller_args`, a transcription of CustomExplainer.GetContainer). Only what ties them to a cluster is replaced:
the executable (this Python), the bundle's mount folder, the host (127.0.0.1), the ports (free ones) and, on a
machine without CUDA, `--device cuda` (the GPU image's) by `--device cpu`; `--stop-after` is added so a server never
outlives the test. Answers are compared with Explainer.explain on the same bundle (1e-5).

The manifests are validated against the InferenceService CRD's schema (tests/serve/data/, its source named there),
strictly: an unknown field fails, as with `kubectl apply --validate=strict`.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from fusioncam.errors import InputError
from fusioncam.serve.kserve_arguments import resolve
from fusioncam.serve.listen_ports import check_ports_free
from tests.serve.server_process import stop_process

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCHEMA = Path(__file__).parent / "data" / "kserve_inferenceservice_schema.json"
MANIFESTS = {"cpu": (DEPLOY / "inferenceservice.yaml", DEPLOY / "Dockerfile"),
             "gpu": (DEPLOY / "inferenceservice-gpu.yaml", DEPLOY / "Dockerfile.gpu")}
NAMES = ["cat", "dog", "fox", "owl", "yak"]
SIZE = 16
NAMESPACE = "default"
SERVER_LIFETIME_S = 240
TOLERANCE = 1e-5
HAS_KSERVE = importlib.util.find_spec("kserve") is not None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def manifest(kind: str) -> dict:
    return yaml.safe_load(MANIFESTS[kind][0].read_text())


# ------------------------------------------------------------------------------- the manifests and the CRD schema


def strict(schema):
    """The CRD schema with unknown fields refused (additionalProperties false where the schema lists properties and
    does not keep unknown fields), as the API server's strict field validation refuses them."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: strict(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema["additionalProperties"] = False
    return schema


@pytest.fixture(scope="module")
def crd_validator():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed: pip install 'fusioncam[test]'")
    document = json.loads(SCHEMA.read_text())
    source = document["source"]
    assert source["repository"] == "https://github.com/kserve/kserve" and len(source["commit"]) == 40
    return jsonschema.Draft7Validator(strict(document["openAPIV3Schema"]))


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_the_manifest_validates_against_kserves_inferenceservice_schema(crd_validator, kind):
    document = manifest(kind)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in crd_validator.iter_errors(document)]
    assert errors == []
    assert document["apiVersion"] == "serving.kserve.io/v1beta1" and document["kind"] == "InferenceService"


@pytest.mark.parametrize("path, value", [
    (("spec", "explainer", "containerConcurency"), 16),                     # a misspelt field
    (("spec", "explainer", "containerConcurrency"), "sixteen"),             # a string for an integer
    (("spec", "explainer", "containers", 0, "readinessProbe", "httpGet", "paht"), "/v2/health/ready"),
    (("spec", "predictor", "model", "modelFormat", "name"), 1),             # an integer for a string
])
def test_the_schema_refuses_a_broken_manifest(crd_validator, path, value):
    document = copy.deepcopy(manifest("cpu"))
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert list(crd_validator.iter_errors(document)), f"{path} = {value!r} was accepted"


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_the_manifest_probes_the_models_readiness_and_sets_the_deployment_settings(kind):
    document = manifest(kind)
    explainer = document["spec"]["explainer"]
    container = explainer["containers"][0]
    name = document["metadata"]["name"]
    assert container["readinessProbe"]["httpGet"]["path"] == f"/v2/models/{name}/ready"
    args = container["args"]
    timeout_s = float(args[args.index("--timeout-s") + 1])
    assert 0 < timeout_s < explainer["timeout"]  # fusioncam's deadline answers before Knative's timeout
    annotations = explainer["annotations"]
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert container["securityContext"]["runAsNonRoot"] is True
    predictor = document["spec"]["predictor"]["model"]
    assert predictor["modelFormat"]["name"] == "onnx" and predictor["protocolVersion"] == "v2"  # Triton speaks v2
    assert not predictor["storageUri"].endswith(".onnx")  # a Triton model repository, not one file


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_the_images_run_as_a_numeric_user(dockerfile):
    users = [line.split()[1] for line in (DEPLOY / dockerfile).read_text().splitlines() if line.startswith("USER ")]
    assert users and all(part.isdigit() and int(part) > 0 for part in users[-1].split(":"))


def test_the_gpu_image_pins_its_wheels_and_fails_on_a_failed_pipe():
    text = (DEPLOY / "Dockerfile.gpu").read_text()
    assert 'SHELL ["/bin/bash", "-o", "pipefail", "-c"]' in text
    assert "ARG ONNXRUNTIME_GPU_VERSION=1.26.0" in text and "ARG CUPY_VERSION=" in text
    assert "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" in text and "cupy-cuda12x==${CUPY_VERSION}" in text


# ----------------------------------------------------------------------------- KServe's controller arguments


def controller_args(args: list[str], isvc: dict, container_concurrency: int | None) -> list[str]:
    """The container args after KServe's controller: CustomExplainer.GetContainer
    (github.com/kserve/kserve pkg/apis/serving/v1beta1/explainer_custom.go at aaac4e29), with IncludesArg
    (pkg/utils/collections.go: an arg equal to or starting with the flag) and PredictorServiceName
    (pkg/constants/constants.go: <name>-predictor)."""
    args = list(args)
    name = isvc["metadata"]["name"]
    namespace = isvc["metadata"].get("namespace", NAMESPACE)

    def includes(flag: str) -> bool:
        return any(value == flag or value.startswith(flag) for value in args)

    if not includes("--model_name"):
        args += ["--model_name", name]
    if not includes("--predictor_host"):
        args += ["--predictor_host", f"{name}-predictor.{namespace}"]
    args += ["--http_port", "8080"]
    if not includes("--workers") and container_concurrency is not None:
        args += ["--workers", str(container_concurrency)]
    return args


def entrypoint(dockerfile: Path) -> list[str]:
    lines = [line for line in dockerfile.read_text().splitlines() if line.startswith("ENTRYPOINT ")]
    assert len(lines) == 1
    return json.loads(lines[0][len("ENTRYPOINT "):])


def pod_command(kind: str) -> list[str]:
    """ENTRYPOINT + the container's args (they replace CMD) + what KServe's controller appends."""
    document, dockerfile = manifest(kind), MANIFESTS[kind][1]
    explainer = document["spec"]["explainer"]
    return entrypoint(dockerfile) + controller_args(explainer["containers"][0]["args"], document,
                                                   explainer.get("containerConcurrency"))


def test_controller_args_follow_kserves_rules():
    isvc = {"metadata": {"name": "classifier", "namespace": "team"}}
    assert controller_args(["b"], isvc, None) == ["b", "--model_name", "classifier", "--predictor_host",
                                                  "classifier-predictor.team", "--http_port", "8080"]
    given = controller_args(["b", "--model_name=x", "--workers", "2"], isvc, 16)
    assert given[:4] == ["b", "--model_name=x", "--workers", "2"] and given.count("--workers") == 1
    assert "--model_name" not in given[4:]


def test_the_pod_command_line_parses_with_kserves_meanings():
    from fusioncam.cli.main import build_parser

    argv = pod_command("cpu")
    assert argv[:2] == ["fusioncam", "serve"]
    args = build_parser().parse_args(argv[1:])
    assert args.model_name == "classifier" and args.name is None
    assert args.http_port == 8080 and args.grpc_port == 8081 and args.host == "0.0.0.0"
    assert args.kserve_workers == 16 and args.explainer_threads == 1  # KServe's --workers is not a thread count
    assert args.predictor_host == "classifier-predictor.default"


def test_model_name_names_the_model_when_name_is_absent():
    assert resolve(None, "classifier", ["a.bundle"], 8080, None, None, environ={}).names == ["classifier"]
    kept = resolve(["mine"], "classifier", ["a.bundle"], 8080, None, None, environ={})
    assert kept.names == ["mine"] and "classifier" in kept.warnings[0] and "404" in kept.warnings[0]
    assert resolve(["classifier"], "classifier", ["a.bundle"], 8080, None, None, environ={}).warnings == ()
    with pytest.raises(InputError, match="--model_name classifier names one model, but 2"):
        resolve(None, "classifier", ["a.bundle", "b.bundle"], 8080, None, None, environ={})
    assert resolve(None, None, ["a.bundle"], None, None, None, environ={}).names is None


def test_the_rest_port_comes_from_the_flag_then_knatives_port_then_8080():
    assert resolve(None, None, ["a"], 9000, None, None, environ={"PORT": "7000"}).http_port == 9000
    assert resolve(None, None, ["a"], None, None, None, environ={"PORT": "7000"}).http_port == 7000
    assert resolve(None, None, ["a"], None, None, None, environ={}).http_port == 8080
    with pytest.raises(InputError, match=r"\$PORT is 'eighty'"):
        resolve(None, None, ["a"], None, None, None, environ={"PORT": "eighty"})
    notes = resolve(None, None, ["a"], 1, "p.default", 16, environ={}).notes
    assert any("--workers 16" in note and "one process" in note for note in notes)
    assert any("p.default" in note and "not called" in note for note in notes)


def test_a_port_in_use_is_named_before_anything_loads():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        busy = holder.getsockname()[1]
        with pytest.raises(InputError, match=f"gRPC port {busy} on 127.0.0.1 is already in use.*--grpc-port"):
            check_ports_free("127.0.0.1", [("HTTP", free_port(), "--http-port"), ("gRPC", busy, "--grpc-port")])
    with pytest.raises(InputError, match="both 5000"):
        check_ports_free("127.0.0.1", [("HTTP", 5000, "--http-port"), ("gRPC", 5000, "--grpc-port")])
    for host in ("192.0.2.1", "no-such-host.invalid"):  # TEST-NET-1: no address of this machine; an unknown name
        with pytest.raises(InputError, match=f"cannot listen on {host}: it is not an address of this machine"):
            check_ports_free(host, [("HTTP", free_port(), "--http-port")])
    port = free_port()
    check_ports_free("127.0.0.1", [("HTTP", port, "--http-port")])  # free: nothing raised, and released again
    check_ports_free("127.0.0.1", [("HTTP", port, "--http-port")])


# ------------------------------------------------------------------------------------------ real servers

needs_kserve = pytest.mark.skipif(not HAS_KSERVE, reason="the serve extra (kserve) is not installed")
needs_health = pytest.mark.skipif(importlib.util.find_spec("grpc_health") is None,
                                  reason="grpcio-health-checking is not installed: pip install 'fusioncam[serve]'")


@pytest.fixture(scope="module")
def bundle_folder(tmp_path_factory) -> Path:
    """The mount folder of the manifests (/mnt/bundles) with classifier.bundle in it."""
    import fusioncam
    from tests.support.tiny_models import save, tiny_classifier

    folder = tmp_path_factory.mktemp("bundles")
    model = save(tiny_classifier(size=SIZE, classes=len(NAMES), seed=3), folder / "m.onnx")
    fusioncam.export_onnx(model, folder / "classifier.bundle", input_size=(SIZE, SIZE), class_names=NAMES)
    return folder


@pytest.fixture(scope="module")
def explainer(bundle_folder):
    import fusioncam

    with fusioncam.Explainer(bundle_folder / "classifier.bundle", device="cpu") as alone:
        yield alone


def cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers() and importlib.util.find_spec("cupy") is not None


def on_this_machine(argv: list[str], bundle_folder: Path, http_port: int, grpc_port: int) -> list[str]:
    """The pod's command line with the cluster-bound parts replaced (module docstring)."""
    assert argv[0] == "fusioncam"
    out = [sys.executable, "-m", "fusioncam"]
    values = {"--host": "127.0.0.1", "--http-port": str(http_port), "--http_port": str(http_port),
              "--grpc-port": str(grpc_port), "--grpc_port": str(grpc_port)}
    if not cuda_available():
        values["--device"] = "cpu"
    previous = None
    for arg in argv[1:]:
        if previous in values:
            arg = values[previous]
        elif arg.startswith("/mnt/bundles/"):
            arg = str(bundle_folder / arg[len("/mnt/bundles/"):])
        out.append(arg)
        previous = arg if arg.startswith("--") else None
    return out + ["--stop-after", str(SERVER_LIFETIME_S)]


@contextlib.contextmanager
def running(command: list[str], http_port: int, log: Path, env: dict | None = None):
    """The server subprocess, ready (its REST /v2/health/live answers); stopped with SIGTERM, then killed."""
    import httpx

    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{http_port}/v2/health/live", timeout=1).status_code == 200:
                    break
            time.sleep(0.3)
        else:
            pytest.fail(f"the server did not start in 120 s:\n{log.read_text()[-3000:]}")
        yield process
    finally:
        stop_process(process)


def picture_png(seed: int) -> bytes:
    import cv2

    rgb = (np.random.default_rng(seed).random((23, 31, 3)) * 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".png", rgb)
    assert ok
    return encoded.tobytes()


def model_input(encoded: bytes, folder: Path) -> np.ndarray:
    from fusioncam.images import load_batch

    path = folder / "picture.png"
    path.write_bytes(encoded)
    return load_batch([path], (SIZE, SIZE))[0][0]


def explain_and_compare(base: str, name: str, explainer, folder: Path, seed: int) -> None:
    """A v1 :explain answered with the Explainer's own Grad-CAM and Fusion-CAM maps for the image."""
    import httpx

    encoded = picture_png(seed)
    body = {"instances": [{"image_bytes": {"b64": base64.b64encode(encoded).decode()}}],
            "parameters": {"methods": ["gradcam", "fusion"], "target": "owl"}}
    answer = httpx.post(f"{base}/v1/models/{name}:explain", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    want = explainer.explain(model_input(encoded, folder)[None], "owl", methods=("gradcam", "fusion"))
    entry = answer.json()["explanations"][0]
    assert entry["target"]["class"] == NAMES.index("owl")
    for method in ("gradcam", "fusion"):
        np.testing.assert_allclose(np.asarray(entry["maps"][method], np.float32), want.maps[method][0],
                                   atol=TOLERANCE, err_msg=method)


def grpc_health(grpc_port: int, service: str = "") -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def kserve_repository_call(grpc_port: int, verb: str, name: str) -> bytes:
    """gRPC RepositoryModelLoad/Unload in KServe's own messages (model_name is field 1; Triton's protocol, which
    tritonclient speaks, puts repository_name there, so tritonclient's load_model names no model on a KServe server).
    Encoded by hand: the test process does not import KServe (its protobuf symbols clash with tritonclient's)."""
    import grpc

    def encode(text: str) -> bytes:
        data = text.encode()
        assert len(data) < 128
        return b"\x0a" + bytes([len(data)]) + data

    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/RepositoryModel{verb}",
                                   request_serializer=encode, response_deserializer=lambda data: data)
        return call(name, timeout=60)


def metric(base: str, name: str, labels: dict) -> float:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


@pytest.mark.slow
@needs_kserve
@needs_health
@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_the_controllers_command_line_starts_the_server_and_answers(kind, bundle_folder, explainer, tmp_path):
    import httpx
    http_port, grpc_port = free_port(), free_port()
    argv = pod_command(kind)
    command = on_this_machine(argv, bundle_folder, http_port, grpc_port)
    isvc = manifest(kind)
    name = isvc["metadata"]["name"]
    probe = isvc["spec"]["explainer"]["containers"][0]["readinessProbe"]["httpGet"]["path"]
    log = tmp_path / "server.log"
    knative = {"PORT": str(http_port), "K_SERVICE": f"{name}-explainer", "K_CONFIGURATION": f"{name}-explainer",
               "K_REVISION": f"{name}-explainer-00001"}
    with running(command, http_port, log, env=knative):
        base = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 60
        while httpx.get(f"{base}{probe}", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, f"{probe} never answered 200"
            time.sleep(0.3)
        assert httpx.get(f"{base}/v2/health/ready", timeout=5).status_code == 200
        assert grpc_health(grpc_port) == "SERVING" and grpc_health(grpc_port, name) == "SERVING"
        assert httpx.get(f"{base}/v2/models", timeout=5).json()["models"] == [name]  # --model_name named it
        explain_and_compare(base, name, explainer, tmp_path, seed=1)

        # model control is off: refused over REST (403) and gRPC (PERMISSION_DENIED), the model still served
        refused = httpx.post(f"{base}/v2/repository/models/{name}/unload", timeout=10)
        assert refused.status_code == 403 and "--allow-model-control" in refused.json()["error"]
        import tritonclient.grpc as tritongrpc
        from tritonclient.utils import InferenceServerException

        with pytest.raises(InferenceServerException, match="--allow-model-control") as caught:
            tritongrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}").unload_model(name)
        assert "PERMISSION_DENIED" in str(caught.value.status())
        assert httpx.get(f"{base}{probe}", timeout=5).status_code == 200

        # a GET on a POST verb: 405 naming the method; a bad request: one log line, counted under its verb
        wrong = httpx.get(f"{base}/v1/models/{name}:predict", timeout=10)
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST" and "POST" in wrong.json()["error"]
        bad = httpx.post(f"{base}/v1/models/{name}:explain", json={"instances": [{"image_bytes": {"b64": "!!"}}]},
                         timeout=10)
        assert bad.status_code == 400
        assert metric(base, "fusioncam_requests_total", {"model_name": name, "method": "explain",
                                                         "outcome": "bad_request"}) == 1
        assert metric(base, "fusioncam_requests_total", {"model_name": name, "method": "predict",
                                                         "outcome": "bad_request"}) == 0
        with pytest.raises(InferenceServerException):
            tritongrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}").get_model_metadata("nope")
        garbage = tritongrpc.InferInput("image_bytes", [1], "BYTES")
        garbage.set_data_from_numpy(np.array([b"GIF89a? not an image at all"], dtype=np.object_))
        with pytest.raises(InferenceServerException) as caught:
            tritongrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}").infer(name, [garbage])
        assert "INVALID_ARGUMENT" in str(caught.value.status())
        assert metric(base, "fusioncam_requests_total", {"model_name": name, "method": "infer",
                                                         "outcome": "bad_request"}) == 1
        time.sleep(0.5)
    text = log.read_text()
    assert "Traceback" not in text and "deprecated" not in text.lower(), text[-4000:]
    assert "--workers 16 (KServe's server processes" in text
    assert "CPU threads per ONNX Runtime session:" in text
    unload_lines = [line for line in text.splitlines() if f"/v2/repository/models/{name}/unload" in line]
    assert len(unload_lines) == 1 and "403" in unload_lines[0]
    assert sum("nope" in line for line in text.splitlines()) == 1  # the gRPC NOT_FOUND, in one line
    assert sum("ModelInfer" in line for line in text.splitlines()) == 1  # the bad gRPC infer, in one line


@pytest.mark.slow
@needs_kserve
@needs_health
def test_unload_makes_the_server_unready_and_load_restores_it(bundle_folder, explainer, tmp_path):
    import httpx
    import tritonclient.grpc as tritongrpc

    http_port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "fusioncam", "serve", str(bundle_folder / "classifier.bundle"),
               "--name", "classifier", "--device", "cpu", "--http-port", str(http_port), "--grpc-port", str(grpc_port),
               "--allow-model-control", "--stop-after", str(SERVER_LIFETIME_S)]
    base = f"http://127.0.0.1:{http_port}"
    with running(command, http_port, tmp_path / "server.log"):
        for unload, load in ((lambda: httpx.post(f"{base}/v2/repository/models/classifier/unload", timeout=60),
                              lambda: httpx.post(f"{base}/v2/repository/models/classifier/load", timeout=60)),
                             (lambda: kserve_repository_call(grpc_port, "Unload", "classifier"),
                              lambda: kserve_repository_call(grpc_port, "Load", "classifier"))):
            assert httpx.get(f"{base}/v2/health/ready", timeout=5).status_code == 200
            answer = unload()
            # REST: {"name": ..., "unload": true}; gRPC: model_name (field 1) and isUnloaded true (field 2)
            assert (answer.json() == {"name": "classifier", "unload": True} if isinstance(answer, httpx.Response)
                    else answer == b"\x0a\x0aclassifier\x10\x01")
            assert httpx.get(f"{base}/v2/health/ready", timeout=5).status_code == 503
            assert httpx.get(f"{base}/v2/models/classifier/ready", timeout=5).status_code != 200
            assert httpx.get(f"{base}/v1/models/classifier", timeout=5).status_code != 200  # v1 readiness
            assert not tritongrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}").is_server_ready()
            assert grpc_health(grpc_port) == "NOT_SERVING" and grpc_health(grpc_port, "classifier") == "NOT_SERVING"
            gone = httpx.post(f"{base}/v1/models/classifier:explain", json={"instances": []}, timeout=10)
            assert gone.status_code == 404
            answer = load()
            assert (answer.json() == {"name": "classifier", "load": True} if isinstance(answer, httpx.Response)
                    else answer == b"\x0a\x0aclassifier\x10\x01")
            assert httpx.get(f"{base}/v2/health/ready", timeout=5).status_code == 200
            assert httpx.get(f"{base}/v2/models/classifier/ready", timeout=5).status_code == 200
            assert grpc_health(grpc_port) == "SERVING" and grpc_health(grpc_port, "classifier") == "SERVING"
            explain_and_compare(base, "classifier", explainer, tmp_path, seed=2)
        with pytest.raises(Exception, match="NOT_FOUND|unknown service"):
            grpc_health(grpc_port, "nope")
        assert watched_statuses(grpc_port, base) == ["SERVING", "NOT_SERVING", "SERVING"]


def watched_statuses(grpc_port: int, base: str) -> list[str]:
    """grpc.health.v1 Watch on the model while it is unloaded and loaded again: each change arrives on the stream."""
    import grpc
    import httpx
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    seen = []
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="classifier"),
                                                            timeout=60)
        for step in ("unload", "load", None):
            seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(next(stream).status))
            if step:
                assert httpx.post(f"{base}/v2/repository/models/classifier/{step}", timeout=60).status_code == 200
        stream.cancel()
    return seen


@pytest.mark.slow
@needs_kserve
def test_a_port_in_use_exits_2_with_one_line_before_the_model_loads(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        busy = holder.getsockname()[1]
        missing = tmp_path / "not-loaded.bundle"  # never read: the port is checked first
        done = subprocess.run([sys.executable, "-m", "fusioncam", "serve", str(missing), "--http-port", str(busy),
                               "--grpc-port", str(free_port())], capture_output=True, text=True, timeout=120,
                              check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [f"fusioncam serve: error: HTTP port {busy} on 127.0.0.1 is already in use by another process: "
                     f"stop it or choose another port with --http-port"]
