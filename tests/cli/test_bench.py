"""`fusioncam bench`: every field in its JSON, the floor and the ratio computed from what was measured in the run,
percentiles of the measured samples, unavailable precisions named with their reason, no foreign file overwritten,
and pytorch-grad-cam timed side by side on a torch model."""

import json
from pathlib import Path

import numpy as np
import pytest

from fusioncam.benchmarking import BenchSettings, run_bench, suite
from fusioncam.benchmarking.latency import latency_samples, latency_summary
from fusioncam.cli.main import main
from tests.support.tiny_models import tiny_bundle_at

ROW_FIELDS = {"precision", "method", "batch_size", "p50_s", "p90_s", "p99_s", "mean_s", "runs", "images_per_s",
              "stages", "floor", "ratio_to_floor", "peak_rss_bytes", "rss_rise_bytes", "gpu_used_bytes"}
MACHINE_FIELDS = {"cpu_model", "cpu_cores", "gpus", "onnxruntime", "numpy", "python", "fusioncam", "commit"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_bundle_at(tmp_path_factory.mktemp("bench"), size=16, seed=3)


def test_json_has_every_field_and_the_ratio_is_latency_over_the_measured_floor(tiny, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", str(tiny), "--methods", "gradcam,fusion", "--batch-sizes", "1,3", "--seconds", "0.05",
                 "--precision", "fp32,tf32", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert {"bundle", "source", "layer", "channels", "device", "scorer_batch", "settings", "results", "unavailable",
            "machine"} <= set(report)
    assert MACHINE_FIELDS <= set(report["machine"])
    assert [(r["method"], r["batch_size"]) for r in report["results"]] == [
        ("gradcam", 1), ("gradcam", 3), ("fusion", 1), ("fusion", 3)]
    for row in report["results"]:
        assert ROW_FIELDS <= set(row)
        assert row["runs"] >= 3 and row["p50_s"] <= row["p90_s"] <= row["p99_s"]
        assert row["images_per_s"] == pytest.approx(row["batch_size"] / row["p50_s"])
        floor = row["floor"]
        assert floor["explain_pass_s"] > 0 and floor["scorer_images_per_s"] > 0
        assert floor["seconds"] == pytest.approx(floor["explain_pass_s"] + floor["scorer_forwards"]
                                                 / floor["scorer_images_per_s"])
        assert row["ratio_to_floor"] == pytest.approx(row["p50_s"] / floor["seconds"])
        stages = row["stages"]
        assert stages["explain_pass"] > 0 and stages["other"] >= 0
        assert floor["scorer_forwards"] == stages["scorer_forwards_run"] + stages["method_forwards_run"]
    fusion = [r for r in report["results"] if r["method"] == "fusion"]
    # Fusion-CAM's sweep scores each of the K=4 channels of every image (none constant on these photos)
    assert [r["stages"]["scorer_forwards_run"] + r["stages"]["scorer_forwards_skipped"] for r in fusion] == [4, 12]
    assert all(r["stages"]["scorer_forwards"] > 0 and r["stages"]["mask_generation"] > 0 for r in fusion)
    assert [row["precision"] for row in report["unavailable"]] == ["tf32"]
    assert "CUDA" in report["unavailable"][0]["reason"]
    table = capsys.readouterr().out
    assert "fusion" in table and "x floor" in table and "tf32: not measured" in table


def test_floor_follows_the_measured_scorer_throughput(tiny, monkeypatch):
    """The floor uses the throughput measured in the run: halve it and the scorer part of the floor doubles."""
    settings = BenchSettings(methods=("fusion",), batch_sizes=(2,), seconds=0.02, device="cpu")
    measured = []
    real = suite.scorer_throughput

    def recorded(explainer, seconds=3.0, min_runs=3):
        measured.append(real(explainer, seconds=seconds, min_runs=min_runs) / 2)
        return measured[-1]

    monkeypatch.setattr(suite, "scorer_throughput", recorded)
    row = run_bench(tiny, settings)["results"][0]
    assert row["floor"]["scorer_images_per_s"] == measured[0]
    scorer_part = row["floor"]["seconds"] - row["floor"]["explain_pass_s"]
    assert scorer_part == pytest.approx(row["floor"]["scorer_forwards"] / measured[0])


def test_percentiles_are_those_of_the_timed_samples_after_the_warm_up():
    durations = iter([5.0] + [0.01 * k for k in range(1, 11)])  # the warm-up call is not timed
    now = [0.0]
    calls = []

    def clock() -> float:
        return now[0]

    def run() -> None:
        calls.append(1)
        now[0] += next(durations)

    samples = latency_samples(run, seconds=0.5, min_runs=3, warmup=1, clock=clock)
    assert len(calls) == 1 + len(samples)
    assert samples == pytest.approx([0.01 * k for k in range(1, len(samples) + 1)])
    summary = latency_summary(samples)
    assert summary["p50_s"] == pytest.approx(np.percentile(samples, 50))
    assert summary["p99_s"] == pytest.approx(np.percentile(samples, 99))
    assert summary["runs"] == len(samples) and sum(samples) >= 0.5


def test_a_file_that_is_not_a_bench_result_is_not_overwritten(tiny, tmp_path, capsys):
    foreign = tmp_path / "notes.json"
    foreign.write_text('{"mine": 1}\n')
    code = main(["bench", str(tiny), "--batch-sizes", "1", "--seconds", "0.01", "--json", str(foreign)])
    assert code == 2
    assert foreign.read_text() == '{"mine": 1}\n'
    assert "not a fusioncam bench result" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--batch-sizes", "1,0"], "positive integers"),
    (["--precision", "fp64"], "unknown precision fp64"),
    (["--seconds", "0"], "positive number of seconds"),
])
def test_bad_arguments_are_named(tiny, argv, message, capsys):
    with pytest.raises(SystemExit):
        main(["bench", str(tiny), *argv])
    assert message in capsys.readouterr().err


@pytest.mark.slow  # pytorch-grad-cam's first run on a fresh torch model: about 10 s here
def test_pytorch_grad_cam_side_by_side_on_a_torch_model(tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    torch = pytest.importorskip("torch")
    import fusioncam
    from tests.support.small_cnn import SmallNet

    torch.manual_seed(0)
    model = SmallNet().eval()
    bundle = fusioncam.export_torch(model, "features.2", tmp_path / "small.fcam", input_size=(32, 32)).bundle
    settings = BenchSettings(methods=("gradcam", "fusion"), batch_sizes=(2,), seconds=0.02, device="cpu",
                             compare=("pytorch-grad-cam",))
    report = run_bench(bundle, settings, torch_model=(model, model.features[2]))
    compared = report["pytorch_grad_cam"]
    assert compared["class"] == {"gradcam": "GradCAM"} and compared["not_in_pytorch_grad_cam"] == ["fusion"]
    (row,) = compared["results"]
    assert row["method"] == "gradcam" and row["batch_size"] == 2 and row["runs"] >= 3 and row["p50_s"] > 0
    without = run_bench(bundle, BenchSettings(methods=("gradcam",), batch_sizes=(1,), seconds=0.01, device="cpu",
                                              compare=("pytorch-grad-cam",)))
    assert "not a torch model" in without["pytorch_grad_cam"]["skipped"]


def test_int8_rows_use_the_int8_scorer_and_its_own_floor(tmp_path):
    import fusioncam
    from tests.support.tiny_models import save, tiny_classifier

    model = save(tiny_classifier(size=16, seed=5), tmp_path / "tiny.onnx")
    bundle = fusioncam.export_onnx(model, tmp_path / "int8.fcam", "feat", int8_scorer=True).bundle
    report = run_bench(bundle, BenchSettings(methods=("scorecam",), batch_sizes=(2,), precisions=("fp32", "int8"),
                                             seconds=0.02, device="cpu"))
    assert [row["precision"] for row in report["results"]] == ["fp32", "int8"] and not report["unavailable"]
    fp32, int8 = report["results"]
    assert fp32["floor"]["scorer_images_per_s"] != int8["floor"]["scorer_images_per_s"]  # each scorer measured
    from fusioncam.runtime.int8_sweep import DEFAULT_INT8_RESCORE

    assert fp32["stages"]["scorer_forwards_run"] == 8  # 2 images x 4 channels
    # the INT8 sweep's 8 forwards, then each image's top min(DEFAULT_INT8_RESCORE, 4) channels again in float32
    assert int8["stages"]["scorer_forwards_run"] == 8 + 2 * min(DEFAULT_INT8_RESCORE, 4)
