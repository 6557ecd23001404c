"""Which image classifiers export and explain: torchvision's classification models, timm families, Hugging Face.

Each model (random weights, no downloads) runs in its own process with a timeout:

1. `export_torch(model, None, ...)`: the automatic target (for transformers one whose patch tokens reach the logits);
2. the explain graph's logits, map and gradient against torch autograd on the same module's output, rearranged the
   same way (relative max error <= 1e-4, float32, two random images, arg-max and class 3);
3. all seven methods on one image (fast mode, the 32 top channels, to keep the sweep short): finite maps in [0, 1];
4. an earlier target (the last block of the first stage list_layers marks) exported and checked against autograd.

Rows are appended to a resume file as they finish (`--resume`, the default, skips models already there), so a long
run can stop and go on. `python -m benchmarks.coverage [--only torchvision|timm|hf] [--timeout S]` writes
benchmarks/results/coverage-<machine>.json and docs/coverage.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import RESULTS, cpu_label

DOCS = Path(__file__).resolve().parent.parent / "docs" / "coverage.md"
TOLERANCE = 1e-4
FAST_CHANNELS = 32
METHODS = ("gradcam", "gradcam++", "xgradcam", "scorecam", "groupcam", "unioncam", "fusion")

# timm: one small member per family (>= 25 families), with a small input where the family allows one.
TIMM_MODELS = {
    "vit_tiny_patch16_224": {"img_size": 64}, "deit_tiny_distilled_patch16_224": {"img_size": 64},
    "deit3_small_patch16_224": {"img_size": 64}, "beit_base_patch16_224": {"img_size": 64},
    "vit_small_patch14_reg4_dinov2": {"img_size": 56}, "eva02_tiny_patch14_224": {"img_size": 56},
    "swin_tiny_patch4_window7_224": {}, "swinv2_cr_tiny_ns_224": {}, "maxvit_nano_rw_256": {},
    "coatnet_nano_rw_224": {}, "levit_128s": {}, "levit_conv_128s": {}, "pit_ti_224": {}, "cait_xxs24_224": {"img_size": 64},
    "xcit_nano_12_p16_224": {"img_size": 64}, "convnext_atto": {"img_size": 128}, "convnextv2_atto": {"img_size": 128},
    "efficientnet_b0": {"img_size": 128}, "efficientnetv2_rw_t": {"img_size": 128}, "regnety_002": {"img_size": 128},
    "resnet18d": {"img_size": 128}, "resnetrs50": {"img_size": 128}, "nf_resnet26": {"img_size": 128},
    "repvgg_a0": {"img_size": 128}, "mobilenetv3_small_050": {"img_size": 128},
    "mobilenetv4_conv_small": {"img_size": 128}, "mobilevit_xxs": {"img_size": 128},
    "mobilevitv2_050": {"img_size": 128}, "fastvit_t8": {"img_size": 128}, "efficientvit_b0": {"img_size": 128},
    "ghostnet_100": {"img_size": 128}, "hrnet_w18_small": {"img_size": 128}, "res2net50_14w_8s": {"img_size": 128},
    "dla34": {"img_size": 128}, "cspresnet50": {"img_size": 128}, "tresnet_m": {"img_size": 128},
}
HF_MODELS = ("vit", "deit", "beit", "swin", "swinv2", "convnext", "resnet", "regnet", "efficientnet", "mobilevit",
             "dinov2")
TORCHVISION_SIZES = {"maxvit_t": 224, "inception_v3": 160}
BIG_TORCHVISION = ("large", "_l_", "_h_", "_b_", "vgg", "wide", "32gf", "16gf", "128gf", "x_32", "x_64", "_base",
                   "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_m", "efficientnet_v2_l",
                   "resnet152", "resnext101")  # hundreds of MB: measured after the others


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def all_models(only: str | None) -> list[str]:
    """Model ids 'source:name' in the order they run."""
    hf = [f"hf:{name}" for name in HF_MODELS] if only in (None, "hf") else []
    timm = [f"timm:{name}" for name in TIMM_MODELS] if only in (None, "timm") else []
    torchvision = [f"torchvision:{name}" for name in torchvision_names()] if only in (None, "torchvision") else []
    big = [model for model in torchvision if any(word in model for word in BIG_TORCHVISION)]
    small = [model for model in torchvision if model not in big]
    mixed = [model for pair in itertools.zip_longest(timm, small) for model in pair if model]
    return hf + mixed + big  # a run stopped early still samples every source; the largest models come last


# ----- building one model (child process) -------------------------------------------------------------------------


def _hf_model(name: str):
    import transformers as tf

    small = dict(num_labels=10)
    vit = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=128, **small)
    configs = {
        "vit": (tf.ViTConfig(**vit), tf.ViTForImageClassification, 32),
        "deit": (tf.DeiTConfig(**vit), tf.DeiTForImageClassification, 32),
        "beit": (tf.BeitConfig(**vit, use_mean_pooling=True), tf.BeitForImageClassification, 32),
        "dinov2": (tf.Dinov2Config(**vit), tf.Dinov2ForImageClassification, 32),
        "swin": (tf.SwinConfig(image_size=64, patch_size=4, embed_dim=32, depths=[1, 1, 2], num_heads=[1, 2, 4],
                               window_size=4, **small), tf.SwinForImageClassification, 64),
        "swinv2": (tf.Swinv2Config(image_size=64, patch_size=4, embed_dim=32, depths=[1, 1, 2], num_heads=[1, 2, 4],
                                   window_size=4, **small), tf.Swinv2ForImageClassification, 64),
        "convnext": (tf.ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], **small),
                     tf.ConvNextForImageClassification, 64),
        "resnet": (tf.ResNetConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], embedding_size=16, **small),
                   tf.ResNetForImageClassification, 64),
        "regnet": (tf.RegNetConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], embedding_size=16,
                                   groups_width=8, **small), tf.RegNetForImageClassification, 64),
        "efficientnet": (tf.EfficientNetConfig(image_size=64, depth_coefficient=0.5, **small),
                         tf.EfficientNetForImageClassification, 64),
        "mobilevit": (tf.MobileViTConfig(image_size=64, **small), tf.MobileViTForImageClassification, 64),
    }
    config, cls, size = configs[name]
    return cls(config), size


def build(model_id: str):
    """(model in eval mode with seeded random weights, input size) for 'source:name'."""
    import torch

    torch.manual_seed(0)
    source, name = model_id.split(":", 1)
    if source == "torchvision":
        import torchvision

        kwargs, size = {}, TORCHVISION_SIZES.get(name, 128)
        if name.startswith("vit_"):
            patch = int(name.rsplit("_", 1)[1])
            size = 4 * patch
            kwargs["image_size"] = size
        if name == "maxvit_t":
            kwargs["input_size"] = (size, size)
        if name in ("googlenet", "inception_v3"):
            kwargs["aux_logits"] = False
            kwargs["init_weights"] = True
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    elif source == "timm":
        import timm

        kwargs = dict(TIMM_MODELS[name])
        try:
            model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
        except TypeError:  # convolutional families take no img_size: they run at any size
            model = timm.create_model(name, pretrained=False, num_classes=10)
        size = kwargs.get("img_size") or int(model.pretrained_cfg.get("input_size", (3, 224, 224))[1])
        if not _accepts(model, size):
            model = timm.create_model(name, pretrained=False, num_classes=10)
            size = int(model.pretrained_cfg["input_size"][1])
    else:
        model, size = _hf_model(name)
    return model.eval(), size


def _accepts(model, size: int) -> bool:
    import torch

    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
        return True
    except Exception:  # noqa: BLE001  (a family that ignores img_size: fall back to its own size)
        return False


def _autograd(model, path: str, images, targets):
    """Logits, the module's first tensor and d(sum of the chosen logits)/d(that tensor), by torch autograd."""
    import numpy as np
    import torch

    from fusioncam.export.module_outputs import model_logits, pick_tensor

    module = dict(model.named_modules())[path]
    captured = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(pick_tensor(out, None, path)))
    try:
        logits = model_logits(model(torch.from_numpy(images)), None)
    finally:
        handle.remove()
    used = np.where(np.asarray(targets) < 0, logits.argmax(1).numpy(), targets)
    score = logits[torch.arange(len(used)), torch.from_numpy(used)].sum()
    (grads,) = torch.autograd.grad(score, captured[-1])
    return logits.detach().numpy(), captured[-1].detach().numpy(), grads.numpy()


def _relative(got, want) -> float:
    import numpy as np

    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))


def check_target(model, path, size: int, folder: Path, with_methods: bool) -> dict:
    """Export with `path` (None: automatic), compare with autograd, optionally run the seven methods."""
    import numpy as np
    import torch

    import fusioncam
    from fusioncam.export.target_layout import rearrange

    started = time.perf_counter()
    result = fusioncam.export_torch(model, path, folder / "bundle", input_size=(size, size))
    seconds = time.perf_counter() - started
    bundle = result.bundle.path
    size_mb = sum(f.stat().st_size for f in bundle.iterdir()) / 2**20
    layer = result.layer
    row = {"target": result.bundle.manifest.target_layer, "K": int(layer.shape[1]),
           "hxw": f"{layer.shape[2]}x{layer.shape[3]}", "layout": layer.layout.describe(),
           "export_s": round(seconds, 2), "bundle_mb": round(size_mb, 2)}
    images = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    targets = np.array([-1, 3], dtype=np.int64)
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle / "explain.onnx"), providers=["CPUExecutionProvider"])
    logits, acts, grads = session.run(["logits", "activations", "gradients"], {"input": images, "target": targets})
    from fusioncam.export.torch_targets import inference_copy

    with torch.enable_grad():  # in-place ops off, as in the export: an in-place ReLU would overwrite the hooked tensor
        want_logits, want_acts, want_grads = _autograd(inference_copy(model), row["target"], images, targets)
    errors = {"logits": _relative(logits, want_logits), "activations": _relative(acts, rearrange(want_acts, layer.layout)),
              "gradients": _relative(grads, rearrange(want_grads, layer.layout))}
    row["relative_error"] = {k: float(f"{v:.3g}") for k, v in errors.items()}
    row["gradient_zero"] = bool(np.abs(grads).max() == 0)
    failures = [f"{k} relative error {v:.2e} > {TOLERANCE:.0e}" for k, v in errors.items() if not v <= TOLERANCE]
    if row["gradient_zero"]:
        failures.append("the map's gradient is all zero")
    if with_methods and not failures:
        explainer = fusioncam.Explainer(bundle, device="cpu", batch_size=32, max_channels=min(FAST_CHANNELS, row["K"]))
        explanation = explainer.explain(images[:1], methods=METHODS)
        bad = [m for m in METHODS if not (np.isfinite(explanation.maps[m]).all() and explanation.maps[m].min() >= 0
                                         and explanation.maps[m].max() <= 1)]
        row["methods"] = "all seven finite in [0,1]" if not bad else f"bad maps: {', '.join(bad)}"
        if bad:
            failures.append(row["methods"])
    row["status"] = "pass" if not failures else "fail"
    if failures:
        row["reason"] = "; ".join(failures)
    return row


def _early_target(model, size: int, automatic: str) -> str | None:
    """The first 'last block of a stage' list_layers marks (a map bigger than 1x1) when there are several stages,
    else the first block of the only one ('blocks.0' of a ViT); never the automatic target."""
    from fusioncam.export.torch_targets import list_torch_layers

    layers = [layer for layer in list_torch_layers(model, (size, size)) if min(layer.spatial) > 1]
    ends = [layer.name for layer in layers if "last block of a stage" in layer.role]
    names = {layer.name for layer in layers}
    if len(ends) == 1:  # one stage: its first block ("blocks.11" -> "blocks.0"; a stage named "blocks" -> "blocks.0")
        firsts = [ends[0].rpartition(".")[0] + ".0", ends[0] + ".0"]
        ends = [name for name in firsts if name in names]
    return next((name for name in ends if name != automatic), None)


def run_one(model_id: str) -> dict:
    """Everything for one model; failures become a row with the fusioncam error (or the exception) as reason."""
    row: dict = {"model": model_id}
    try:
        model, size = build(model_id)
    except Exception as exc:  # noqa: BLE001
        return {**row, "status": "not built", "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    row["input"] = f"{size}x{size}"
    row["parameters_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    with tempfile.TemporaryDirectory() as folder:
        try:
            row.update(check_target(model, None, size, Path(folder) / "auto", with_methods=True))
        except Exception as exc:  # noqa: BLE001
            row.update(status="fail", reason=f"{type(exc).__name__}: {str(exc).splitlines()[0][:400]}")
        try:
            early = _early_target(model, size, row.get("target"))
            if early is not None:
                checked = check_target(model, early, size, Path(folder) / "early", with_methods=False)
                row["early"] = {k: checked[k] for k in ("target", "K", "hxw", "status", "relative_error") if k in checked}
                if "reason" in checked:
                    row["early"]["reason"] = checked["reason"]
        except Exception as exc:  # noqa: BLE001
            row["early"] = {"target": early if "early" in dir() else None, "status": "fail",
                            "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:400]}"}
    return row


# ----- the parent: one subprocess per model, a resume file, the table ------------------------------------------------


def machine() -> dict:
    import onnxruntime
    import torch

    model_name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    versions = {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    for package in ("torchvision", "timm", "transformers", "onnx"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = None
    return {"cpu": model_name, "cores": os.cpu_count(), "versions": versions, "commit": commit,
            "note": "a shared, busy 2-core machine: times are indicative only"}


def run_child(model_id: str, timeout: float) -> dict:
    """run_one in a fresh process (its own memory), killed with its children after `timeout` seconds."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.coverage", "--one", model_id], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               cwd=Path(__file__).resolve().parent.parent)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return {"model": model_id, "status": "timeout", "reason": f"did not finish in {timeout:.0f} s on this machine"}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        last = (err.strip().splitlines() or [f"exit {process.returncode}"])[-1]
        return {"model": model_id, "status": "fail", "reason": f"child process died: {last[:300]}"}
    row = json.loads(lines[-1])
    row["wall_s"] = round(time.perf_counter() - started, 1)
    return row


def markdown(report: dict) -> str:
    rows = report["rows"]
    lines = ["# Coverage: classifiers that export and explain", "",
             f"`python -m benchmarks.coverage` on {report['machine']['cpu']} ({report['machine']['cores']} cores, "
             f"shared and busy: times are indicative), commit {report['machine']['commit']}, "
             + ", ".join(f"{k} {v}" for k, v in report['machine']['versions'].items()) + ".", "",
             "Random weights; automatic target; explain graph vs torch autograd (relative max error <= 1e-4); the seven "
             f"methods in fast mode (top {FAST_CHANNELS} channels) give finite maps in [0, 1]; the early target is the "
             "last block of the first stage `list_layers` marks (checked against autograd only).", ""]
    for source in ("torchvision", "timm", "hf"):
        mine = [r for r in rows if r["model"].startswith(source + ":")]
        if mine:
            passed = sum(r.get("status") == "pass" for r in mine)
            lines.append(f"- {source}: {passed} of {len(mine)} finished models pass")
    lines += ["", "| model | input | target (automatic) | K | h×w | result | export s | bundle MB | early target | early |",
              "| --- | --- | --- | ---: | --- | --- | ---: | ---: | --- | --- |"]
    for r in rows:
        early = r.get("early") or {}
        result = r.get("status", "?") + (f": {r['reason']}" if r.get("reason") else "")
        early_result = early.get("status", "") + (f": {early['reason']}" if early.get("reason") else "")
        lines.append(f"| {r['model']} | {r.get('input', '')} | {r.get('target', '')} | {r.get('K', '')} | "
                     f"{r.get('hxw', '')} | {result.replace('|', '/')} | {r.get('export_s', '')} | "
                     f"{r.get('bundle_mb', '')} | {early.get('target', '') or ''} "
                     f"{early.get('hxw', '')} | {early_result.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=("torchvision", "timm", "hf"))
    parser.add_argument("--models", nargs="*", help="only these ids (source:name)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per model")
    parser.add_argument("--fresh", action="store_true", help="ignore the resume file")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one)))
        return 0
    from fusioncam.atomic import write_text_atomic

    results = RESULTS / f"coverage-{cpu_label()}.json"
    report = json.loads(results.read_text()) if results.exists() and not args.fresh else {"rows": []}
    report["machine"] = machine()
    if args.models:  # asked for by name: measured again
        report["rows"] = [r for r in report["rows"] if r["model"] not in args.models]
    done = {r["model"] for r in report["rows"]}
    for model_id in args.models or all_models(args.only):
        if model_id in done:
            continue
        row = run_child(model_id, args.timeout)
        print(json.dumps(row), flush=True)
        report["rows"].append(row)
        RESULTS.mkdir(parents=True, exist_ok=True)
        write_text_atomic(results, json.dumps(report, indent=2) + "\n")
        write_text_atomic(DOCS, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
