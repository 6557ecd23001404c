"""Which image classifiers export and explain: torchvision's classification models, timm families, Hugging Face.

Each model (random weights, no downloads) runs in its own process with a timeout:

1. `export_torch(model, None, ...)`: the automatic target (for transformers one whose patch tokens reach the logits);
2. the explain graph's logits, map and gradient against torch autograd on the same module's output, rearranged the
   same way (relative max error <= 1e-4, float32, two random images, arg-max and class 3);
3. all seven methods on one image (fast mode, the 32 top channels, to keep the sweep short): finite maps in [0, 1];
4. an earlier target (the last block of the first stage list_layers marks) exported and checked against autograd.

Gradients that miss 1e-4 only through float32 kinks (ReLU sign flips, max-pool ties) are rechecked in float64 with
the explain graph's own kink pattern (benchmarks/relu_sign_flips.py); random weights that leave a network chaotic
or dead are conditioned first (condition_weights), and a model too large for the machine's memory is skipped with
the GiB it needs; each row says which of these happened.

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
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.relu_sign_flips import SignFlipCheck, autograd_reference, check_with_onnx_relu_pattern, relative_error
from benchmarks.report import RESULTS, cpu_label

DOCS = Path(__file__).resolve().parent.parent / "docs" / "coverage.md"
TOLERANCE = 1e-4
FAST_CHANNELS = 32
CHAOS = 1e-5  # float32 vs float64 torch logits beyond this: the random weights amplify rounding (condition_weights)
VANISHED = 1e-6  # two images' logits closer than this (relative): the activations vanish (condition_weights)
TINY_LOGITS = 1e-6  # largest logit below this: the activations vanish (condition_weights)
# a child's peak resident memory: ~1 GiB of libraries plus 23-47 bytes per parameter (weights are 4 bytes), as
# measured on the rows over 40 M parameters that record peak_rss_gib (small models: up to ~70, activations weigh more)
BASE_GIB, PEAK_BYTES_PER_PARAMETER = 1.0, 48
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


def torchvision_parameters(model_id: str) -> int:
    """The parameter count torchvision's weight metadata gives for 'torchvision:name' (no download)."""
    import torchvision

    return min(weights.meta["num_params"] for weights in torchvision.models.get_model_weights(model_id.split(":")[1]))


def all_models(only: str | None) -> list[str]:
    """Model ids 'source:name' in the order they run."""
    hf = [f"hf:{name}" for name in HF_MODELS] if only in (None, "hf") else []
    timm = [f"timm:{name}" for name in TIMM_MODELS] if only in (None, "timm") else []
    torchvision = [f"torchvision:{name}" for name in torchvision_names()] if only in (None, "torchvision") else []
    big = [model for model in torchvision if any(word in model for word in BIG_TORCHVISION)]
    small = [model for model in torchvision if model not in big]
    mixed = [model for pair in itertools.zip_longest(timm, small) for model in pair if model]
    big.sort(key=torchvision_parameters)
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


def check_target(model, path, size: int, folder: Path, with_methods: bool) -> dict:
    """Export with `path` (None: automatic), compare with autograd, optionally run the seven methods."""
    import numpy as np

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

    # in-place ops off, as in the export: an in-place ReLU would overwrite the hooked tensor
    want_logits, want_acts, want_grads = autograd_reference(inference_copy(model), row["target"], images, targets)
    errors = {"logits": relative_error(logits, want_logits),
              "activations": relative_error(acts, rearrange(want_acts, layer.layout)),
              "gradients": relative_error(grads, rearrange(want_grads, layer.layout))}
    row["relative_error"] = {k: float(f"{v:.3g}") for k, v in errors.items()}
    row["gradient_zero"] = bool(np.abs(grads).max() == 0)
    failures = [f"{k} relative error {v:.2e} > {TOLERANCE:.0e}" for k, v in errors.items() if not v <= TOLERANCE]
    if len(failures) == 1 and not errors["gradients"] <= TOLERANCE:  # only the gradients: ReLU sign flips?
        flips = check_with_onnx_relu_pattern(model, row["target"], bundle / "explain.onnx", images, targets,
                                             layer.layout)
        row["relu_sign_flips"] = {"flips": flips.flips, "max_pool_ties": flips.pool_ties,
                                  "far_from_zero": flips.far_flips,
                                  "unmatched_relu_calls": flips.unmatched,
                                  "float64_onnx_relu_pattern": float(f"{flips.relative_error:.3g}"),
                                  "float64": float(f"{flips.plain_float64_error:.3g}")}
        row["note"] = flips.describe(errors["gradients"])
        failures = [] if flips.passed(TOLERANCE) else [f"gradients: {row['note']}"]
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


def _float32_health(model, size: int) -> tuple[float, float, float]:
    """On two random images: (relative max difference of float32 and float64 torch logits: how far the float32
    reference itself is from exact; relative max difference between the two images' float64 logits: ~0 when the
    activations vanish and only biases reach the logits; the largest float64 logit)."""
    import copy

    import numpy as np
    import torch

    from fusioncam.export.module_outputs import model_logits

    images = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32))
    with torch.no_grad():
        single = model_logits(model(images), None).double()
        double = model_logits(copy.deepcopy(model).double()(images.double()), None)
    largest = float(double.abs().max().clamp_min(1e-300))
    return (float((single - double).abs().max()) / largest, float((double[0] - double[1]).abs().max()) / largest,
            largest)


def _health_words(model, size: int) -> tuple[bool, str]:
    """(whether float32 checks mean anything with these weights, the numbers in words)."""
    drift, spread, largest = _float32_health(model, size)
    words = (f"float32 torch logits {drift:.2g} from float64, the two images' logits {spread:.2g} apart "
             f"(largest {largest:.3g})")
    return drift <= CHAOS and spread > VANISHED and largest > TINY_LOGITS, words


def _set_batch_norm_statistics(model, norms: list, size: int) -> None:
    """Each batch norm's running statistics: the average over 4 batches of 8 random images (train-mode forwards)."""
    import numpy as np
    import torch

    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the batches
    model.train()
    with torch.no_grad():
        for seed in range(4):
            model(torch.from_numpy(np.random.default_rng(100 + seed).standard_normal((8, 3, size, size))
                                   .astype(np.float32)))
    model.eval()


def condition_weights(model, size: int) -> str | None:
    """Random weights can leave a deep network chaotic (timm's EfficientNetV2-RW-T: logits ~5e5, float32 torch 60%
    away from float64) or dead (Hugging Face EfficientNet draws batch-norm scales ~0.02: the activations shrink
    ~50 times a layer and the logits underflow; torchvision's ViT has an all-zero head), and then no float32 check
    means anything. Then all-zero linear layers are drawn with torch's default init; if that is not enough and the
    model has batch norms, their statistics are set from 32 random images (as training would), and if that is not
    enough their scales and shifts are reset to torch's defaults (1 and 0) too; the row says what was done.
    None when the weights as built are fine."""
    import torch

    healthy, words = _health_words(model, size)
    if healthy:
        return None
    done = f"as built, {words}"
    zero_heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and not m.weight.any()]
    if zero_heads:  # torchvision's ViT initialises its head to zero: the logits are 0 whatever the image
        torch.manual_seed(0)
        for head in zero_heads:
            head.reset_parameters()
        healthy, after = _health_words(model, size)
        done += f"; {len(zero_heads)} all-zero linear layer(s) drawn with torch's default init: {after}"
        if healthy:
            return done
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.affine]
    if not norms:
        return f"{done}; no batch norm to set"
    _set_batch_norm_statistics(model, norms, size)
    healthy, after = _health_words(model, size)
    done += f"; batch-norm statistics set from 32 random images: {after}"
    if healthy:
        return done
    with torch.no_grad():
        for norm in norms:
            norm.weight.fill_(1.0)
            norm.bias.zero_()
    _set_batch_norm_statistics(model, norms, size)
    return f"{done}; batch-norm scales 1 and shifts 0 as well: {_health_words(model, size)[1]}"


def _early_target(model, size: int, automatic: str) -> str | None:
    """The first 'last block of a stage' list_layers marks (a map bigger than 1x1, not inside another marked one)
    when there are several stages, else the first block of the only one ('blocks.0' of a ViT), else the automatic
    target's sibling two downsamplings earlier; never the automatic target."""
    from fusioncam.export.torch_targets import list_torch_layers

    layers = [layer for layer in list_torch_layers(model, (size, size)) if min(layer.spatial) > 1]
    ends = [layer.name for layer in layers if "last block of a stage" in layer.role]
    # a module inside another marked one is a list within a block (Res2Net's per-scale convs), not a stage; one that
    # holds all the others (TResNet's 'body') is the trunk, which holds the stages
    trunks = {end for end in ends if all(name == end or name.startswith(end + ".") for name in ends)}
    ends = [name for name in ends if not any(name.startswith(other + ".") for other in ends if other not in trunks)]
    names = {layer.name for layer in layers}
    if len(ends) == 1:  # one stage: its first block ("blocks.11" -> "blocks.0"; a stage named "blocks" -> "blocks.0")
        firsts = [ends[0].rpartition(".")[0] + ".0", ends[0] + ".0"]
        ends = [name for name in firsts if name in names]
    early = next((name for name in ends if name != automatic), None)
    return early if early is not None else _two_stages_before(layers, automatic)


def _two_stages_before(layers: list, automatic: str | None) -> str | None:
    """When list_layers marks no stages (timm's RegNet, Inception-v3): the last sibling of the automatic target
    whose map is at least 4 times wider, i.e. about two downsamplings earlier."""
    target = next((layer for layer in layers if layer.name == automatic), None)
    if target is None:
        return None
    depth, parent = automatic.count("."), automatic.rpartition(".")[0]
    wide = [layer.name for layer in layers if layer.name.count(".") == depth and layer.name.rpartition(".")[0] == parent
            and layer.name != automatic and min(layer.spatial) >= 4 * min(target.spatial)]
    return wide[-1] if wide else None


def run_one(model_id: str) -> dict:
    """Everything for one model; failures become a row with the fusioncam error (or the exception) as reason."""
    row: dict = {"model": model_id}
    try:
        model, size = build(model_id)
    except Exception as exc:  # noqa: BLE001
        return {**row, "status": "not built", "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    row["input"] = f"{size}x{size}"
    row["parameters_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    needed = BASE_GIB + row["parameters_m"] * 1e6 * PEAK_BYTES_PER_PARAMETER / 2**30
    available = _available_gib()
    if needed > available:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        return {**row, "status": "skipped", "reason": f"needs ~{needed:.0f} GiB ({BASE_GIB:.0f} GiB and "
                f"{PEAK_BYTES_PER_PARAMETER} bytes per parameter, the most measured on models over 40 M parameters); "
                f"this machine has {total:.1f} GiB, {available:.0f} GiB available when it started"}
    row["weights"] = condition_weights(model, size) or "as built"
    with tempfile.TemporaryDirectory() as folder:
        try:
            row.update(check_target(model, None, size, Path(folder) / "auto", with_methods=True))
        except Exception as exc:  # noqa: BLE001
            row.update(status="fail", reason=f"{type(exc).__name__}: {str(exc).splitlines()[0][:400]}")
        try:
            early = _early_target(model, size, row.get("target"))
            if early is not None:
                checked = check_target(model, early, size, Path(folder) / "early", with_methods=False)
                row["early"] = {k: checked[k] for k in ("target", "K", "hxw", "status", "relative_error", "reason",
                                                        "note", "relu_sign_flips") if k in checked}
        except Exception as exc:  # noqa: BLE001
            row["early"] = {"target": early if "early" in dir() else None, "status": "fail",
                            "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:400]}"}
    row["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # KiB on Linux
    return row


def _available_gib() -> float:
    """MemAvailable of /proc/meminfo in GiB (what a new process can take without swapping)."""
    line = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemAvailable"))
    return int(line.split()[1]) / 2**20


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
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
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
    if not lines and process.returncode == -signal.SIGKILL:
        return {"model": model_id, "status": "fail", "reason": "child process killed by SIGKILL (out of memory: the "
                f"kernel's OOM killer; {_available_gib():.0f} GiB available now)"}
    if not lines:
        last = (err.strip().splitlines() or [f"exit {process.returncode}"])[-1]
        return {"model": model_id, "status": "fail", "reason": f"child process died: {last[:300]}"}
    row = json.loads(lines[-1])
    row["wall_s"] = round(time.perf_counter() - started, 1)
    row["load_1min"] = round(os.getloadavg()[0], 2)  # the machine is shared: how busy it was when the row ended
    return row


def _flips_words(row: dict) -> str | None:
    """The words of a row's float64 recheck (relu_sign_flips.SignFlipCheck.describe), from its stored numbers."""
    flips = row.get("relu_sign_flips")
    if not flips:
        return row.get("note")
    check = SignFlipCheck(flips["float64_onnx_relu_pattern"], flips["float64"], flips["flips"],
                          flips["far_from_zero"], flips["unmatched_relu_calls"], flips.get("max_pool_ties", 0))
    return check.describe(row["relative_error"]["gradients"])


def _result_words(row: dict) -> str:
    """'pass', 'pass (the float64 recheck)' or 'fail: the reason' for the table."""
    if row.get("reason"):
        return f"{row.get('status', '?')}: {row['reason']}"
    note = _flips_words(row)
    return row.get("status", "?") + (f" ({note})" if note else "")


def _summary(rows: list[dict]) -> list[str]:
    """One line per source: how many of its listed models were measured and how many of those pass."""
    listed = {source: len(all_models(source)) for source in ("torchvision", "timm", "hf")}
    lines = []
    for source, count in listed.items():
        mine = [r for r in rows if r["model"].startswith(source + ":")]
        statuses = Counter(r.get("status", "?") for r in mine)
        statuses["not measured yet"] = count - len(mine)
        early = [r["early"] for r in mine if r.get("early")]
        early_passed = sum(e.get("status") == "pass" for e in early)
        lines.append(f"- {source}, {count} listed: " + ", ".join(f"{n} {status}" for status, n in statuses.items() if n)
                     + f"; early targets: {early_passed} of {len(early)} pass")
    return lines


def markdown(report: dict) -> str:
    """docs/coverage.md: the machine, what is checked, the summary per source and one row per model."""
    rows = sorted(report["rows"], key=lambda r: r["model"])
    machine_facts = report["machine"]
    loads = [r["load_1min"] for r in rows if "load_1min" in r]
    load_words = (f"1-minute load average {min(loads):.1f} to {max(loads):.1f} when the rows that record it finished"
                  if loads else "load not recorded")
    lines = ["# Coverage: classifiers that export and explain", "",
             f"`python -m benchmarks.coverage` on {machine_facts['cpu']} ({machine_facts['cores']} cores, "
             f"{machine_facts.get('memory_gib', '?')} GiB), shared with other work while it ran ({load_words}): "
             f"times are indicative only. Commit {machine_facts['commit']}, "
             + ", ".join(f"{k} {v}" for k, v in machine_facts["versions"].items()) + ".", "",
             "Random weights; automatic target; explain graph vs torch autograd (relative max error <= 1e-4, float32, "
             "two random images, arg-max and class 3); the seven methods in fast mode (top "
             f"{FAST_CHANNELS} channels) give finite maps in [0, 1]; the early target is the last block of the first "
             "stage `list_layers` marks (checked against autograd only).", "",
             "When only the gradients miss 1e-4, the check is redone in float64 (benchmarks/relu_sign_flips.py): torch "
             "autograd with each ReLU's on/off pattern and each max pooling's picks taken from the explain graph's own "
             "float32 forward. It passes when the gradients agree with that to 1e-4 and every unit whose ReLU side "
             "differs lies within 1e-5 of zero, every max-pool pick within 1e-5 of the window's float64 maximum "
             "(relative to the tensor): float32 rounding, not a wrong rule. Such rows give both numbers.", "",
             f"Random weights can make a deep network chaotic (float32 torch logits more than {CHAOS:.0e} from "
             f"float64 torch's) or dead (two images' logits within {VANISHED:.0e} of each other, or all below "
             f"{TINY_LOGITS:.0e}: the activations vanish); no float32 check means anything then, so all-zero linear "
             "layers (torchvision ViT's head) are drawn with torch's default init, then if needed the batch-norm "
             "statistics are set from 32 random images (as training would), then if needed the batch-norm scales "
             "and shifts are reset to 1 and 0; the row says so under 'weights'."
             + (f" {unchecked} rows were measured before this check was added (their JSON rows have no 'weights')."
                if (unchecked := sum("weights" not in r for r in rows if r.get("status") != "skipped")) else ""), "",
             *_summary(rows), "",
             "| model | input | target (automatic) | K | h×w | result | export s | bundle MB | peak GiB | early target "
             "| early |",
             "| --- | --- | --- | ---: | --- | --- | ---: | ---: | ---: | --- | --- |"]
    for r in rows:
        early = r.get("early") or {}
        result, early_result = _result_words(r), _result_words(early) if early else ""
        if r.get("weights", "as built") != "as built":
            result += f" [weights: {r['weights']}]"
        lines.append(f"| {r['model']} | {r.get('input', '')} | {r.get('target', '')} | {r.get('K', '')} | "
                     f"{r.get('hxw', '')} | {result.replace('|', '/')} | {r.get('export_s', '')} | "
                     f"{r.get('bundle_mb', '')} | {r.get('peak_rss_gib', '')} | {early.get('target', '') or ''} "
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
