"""`fusioncam serve` on a bundle with two target layers (seeded random ResNet-18, `layer3` + `layer4`, 64x64): the
real server in a subprocess on free 127.0.0.1 ports, called with clients this project did not write (httpx for
KServe v1, tritonclient.http and tritonclient.grpc for v2).

Every map that comes back equals Explainer.explain's `maps` (the layers' aggregated maps) for the same images in
one call (1e-6); the metadata and Triton's model configuration (REST and gRPC, read by Triton's own classes) name
both layers; FullGrad and ShapleyCAM, which a several-layer bundle cannot run, are left out of the outputs and
refused with a 400 that names the layers.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

if importlib.util.find_spec("kserve") is None:  # not imported here: its protobuf symbols clash with tritonclient.grpc's
    pytest.skip("the serve extra (kserve) is not installed: pip install 'fusioncam[serve]'", allow_module_level=True)
httpx = pytest.importorskip("httpx", reason="httpx is not installed: pip install 'fusioncam[test]'")
tritonhttp = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed: pip install 'fusioncam[test]'")
tritongrpc = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
pytest.importorskip("torchvision")
from tritonclient.utils import InferenceServerException  # noqa: E402

import fusioncam  # noqa: E402
from fusioncam.runtime.methods import METHODS  # noqa: E402
from tests.serve.server_process import running_server  # noqa: E402
from tests.support.several_layer_resnet18 import LAYERS, several_layer_resnet18_bundle  # noqa: E402
from tests.support.sharp_resnet18 import SIZE  # noqa: E402

pytestmark = pytest.mark.slow  # one export, one server subprocess and a Fusion-CAM reference: about a minute on 2 cores

NAME = "several"
TOLERANCE = 1e-6
GRADIENT_METHODS = ["gradcam", "gradcam++", "layercam"]


@pytest.fixture(scope="module")
def bundle():
    return several_layer_resnet18_bundle()


@pytest.fixture(scope="module")
def explainer(bundle):
    with fusioncam.Explainer(bundle, device="cpu") as reference:
        yield reference


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-several-layers") / "server.log"
    with running_server([str(bundle)], [NAME], log, "--max-latency-ms", "1", "--timeout-s", "600") as running:
        yield running


def images(count: int, seed: int) -> np.ndarray:
    """Preprocessed float32 images [count, 3, H, W], sent as they are (no decoding on either side)."""
    return np.random.default_rng(seed).standard_normal((count, 3, *SIZE)).astype(np.float32)


def test_v1_explain_answers_the_aggregated_maps_and_names_both_layers(server, explainer):
    batch = images(2, seed=1)
    methods = [*GRADIENT_METHODS, "xgradcam"]
    body = {"instances": [image.tolist() for image in batch], "parameters": {"methods": methods, "target": 7}}
    response = httpx.post(f"{server.base}/v1/models/{NAME}:explain", json=body, timeout=300)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["target_layers"] == LAYERS
    want = explainer.explain(batch, 7, methods=methods)
    assert set(want.layer_maps) == set(LAYERS)  # the reference did aggregate two layers
    for i, entry in enumerate(answer["explanations"]):
        assert entry["target"]["class"] == 7
        for method in methods:
            got = np.asarray(entry["maps"][method], dtype=np.float32)
            np.testing.assert_allclose(got, want.maps[method][i], atol=TOLERANCE, rtol=0, err_msg=f"{i} {method}")
            # the aggregate is neither layer's own map: the answer really is the several-layer one
            assert min(np.abs(got - want.layer_maps[layer][method][i]).max() for layer in LAYERS) > 1e-3


def test_v1_fusion_equals_the_explainers_aggregated_fusion(server, explainer):
    image = images(1, seed=2)
    body = {"instances": [image[0].tolist()], "parameters": {"methods": ["fusion"]}}
    response = httpx.post(f"{server.base}/v1/models/{NAME}:explain", json=body, timeout=600)
    assert response.status_code == 200, response.text
    want = explainer.explain(image, None, methods=["fusion"])
    got = np.asarray(response.json()["explanations"][0]["maps"]["fusion"], dtype=np.float32)
    np.testing.assert_allclose(got, want.maps["fusion"][0], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_v2_tensors_equal_the_explainers_aggregated_maps(server, explainer, protocol):
    module = tritonhttp if protocol == "http" else tritongrpc
    client = (tritonhttp.InferenceServerClient(f"127.0.0.1:{server.http_port}", network_timeout=300)
              if protocol == "http" else tritongrpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}"))
    batch = images(3, seed=3 if protocol == "http" else 4)
    tensor = module.InferInput("image_tensor", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, **({"binary_data": True} if protocol == "http" else {}))
    outputs = [module.InferRequestedOutput(name) for name in ("explained_class", *GRADIENT_METHODS)]
    result = client.infer(NAME, [tensor], outputs=outputs, parameters={"target": 3})
    want = explainer.explain(batch, 3, methods=GRADIENT_METHODS)
    np.testing.assert_array_equal(result.as_numpy("explained_class"), [3, 3, 3])
    for method in GRADIENT_METHODS:
        got = result.as_numpy(method)
        assert got.shape == (3, *SIZE)
        np.testing.assert_allclose(got, want.maps[method], atol=TOLERANCE, rtol=0, err_msg=method)


def test_metadata_and_configuration_name_both_layers_and_leave_out_one_layer_methods(server):
    http = tritonhttp.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    grpc = tritongrpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    one_layer = {"fullgrad", "shapleycam"}
    rest_outputs = {tensor["name"] for tensor in http.get_model_metadata(NAME)["outputs"]}
    grpc_outputs = {tensor.name for tensor in grpc.get_model_metadata(NAME).outputs}
    assert rest_outputs == grpc_outputs
    assert set(METHODS) - one_layer <= rest_outputs and not one_layer & rest_outputs
    rest_config = http.get_model_config(NAME)
    grpc_config = grpc.get_model_config(NAME).config  # tritonclient's own ModelConfig class reads the answer
    assert json.loads(rest_config["parameters"]["target_layers"]["string_value"]) == LAYERS
    assert json.loads(grpc_config.parameters["target_layers"].string_value) == LAYERS
    assert {output["name"] for output in rest_config["output"]} == rest_outputs
    view = grpc.get_model_config(f"{NAME}.gradcam").config  # a method view names its model's layers
    assert json.loads(view.parameters["target_layers"].string_value) == LAYERS
    with pytest.raises(InferenceServerException):
        http.get_model_metadata(f"{NAME}.fullgrad")  # no view of a method the bundle cannot run


def test_one_layer_methods_are_refused_with_the_layers_named(server):
    body = {"instances": [images(1, seed=5)[0].tolist()], "parameters": {"methods": ["gradcam", "fullgrad"]}}
    response = httpx.post(f"{server.base}/v1/models/{NAME}:explain", json=body, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert "fullgrad" in error and "layer3, layer4" in error and "gradcam" in error
    client = tritonhttp.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    tensor = tritonhttp.InferInput("image_tensor", [1, 3, *SIZE], "FP32")
    tensor.set_data_from_numpy(images(1, seed=6))
    with pytest.raises(InferenceServerException, match="shapleycam cannot run on model several"):
        client.infer(NAME, [tensor], outputs=[tritonhttp.InferRequestedOutput("shapleycam")])
