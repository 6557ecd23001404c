"""Every code block of README.md runs as printed.

The ```python blocks run in README order in one namespace, as a reader pastes them into one Python session, in a
temporary folder that holds the files the README names as the reader's own (FILES_OF_THE_READER). The only changes
made to a block are the SUBSTITUTIONS below: network-free variants of downloads and smaller models or inputs where a
printed one would take minutes on a CPU; each says why. A block that cannot run here is listed in NOT_RUN with the
reason (matched by a line of the block, so a moved block is still found); a new block that is in neither list runs,
so blocks added to the README are picked up without editing this file. The `fusioncam ...` command lines of the
```bash blocks are parsed by fusioncam's own argument parser (options and choices as printed; template lines with
[optional] parts are parsed without them, and their options must exist), and the cheap ones in CHEAP_COMMANDS run
in the python blocks' folder, on the files those blocks wrote.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

# (printed text, what runs instead, why). Applied to every block, in this order.
SUBSTITUTIONS: list[tuple[str, str, str]] = [
    ("resnet50(weights=weights)", "resnet18(weights=None)",
     "no download; ResNet-18 instead of ResNet-50 (4x fewer FLOPs, a quarter of the channels to sweep)"),
    ("ResNet50_Weights", "ResNet18_Weights", "the class names of the same ImageNet classes, without a download"),
    ("size = (224, 224)", "size = (64, 64)", "a 2x2 layer4 map: the Score-CAM sweep in seconds on a CPU"),
    ("pretrained=True", "pretrained=False", "timm downloads pretrained weights; random ones need no network"),
    ('"vit_base_patch16_224"', '"vit_tiny_patch16_224"', "the same layout (14x14 grid, 1 prefix token), K=192 not 768"),
    ('transformers.AutoModelForImageClassification.from_pretrained("google/vit-base-patch16-224")',
     "transformers.ViTForImageClassification(transformers.ViTConfig(hidden_size=48, num_hidden_layers=2, "
     "num_attention_heads=2, intermediate_size=96, num_labels=10))",
     "from_pretrained downloads; a small random ViT of the same Hugging Face class"),
    ("weights=seg_weights)", "weights=None, weights_backbone=None)", "no download: random weights"),
    ("seg_size = (520, 520)", "seg_size = (96, 96)", "a 12x12 feature map instead of 65x65: seconds, not minutes"),
    ('regions="predicted")', 'regions="all")', "random weights need not predict a single 'person' pixel"),
    ('explain_dataset("photos/", "efficientnet_lite0"', 'explain_dataset("photos/", "resnet50.bundle"',
     "the first block's 64x64 ResNet-18 bundle instead of EfficientNet-Lite0 at 224: the same Ray pipeline in seconds"),
]

# fusioncam command lines of the bash blocks that run in seconds on the files the python blocks wrote.
CHEAP_COMMANDS = ("fusioncam layers model.onnx",
                  "fusioncam explain photos/ --model resnet50.bundle --methods gradcam++,scorecam --compat pytorch-grad-cam")

# A line of the block -> why the block is not run here.
NOT_RUN: dict[str, str] = {
    "kserve.ModelServer().start([model])":
        "starts KServe's server on every interface and blocks; tests/serve runs fusioncam.serve on 127.0.0.1",
    'grpcclient.InferenceServerClient("127.0.0.1:8081")':
        "needs `fusioncam serve efficientnet_lite0` running; tests/serve/test_protocols.py runs this client against "
        "a real server",
}

# The files the README's blocks treat as the reader's own, made in the temporary folder: skimage's photos, and for
# segformer.onnx ("a [N, C, H', W'] model's .onnx file") a random-weight LRASPP exported at 64x64.
FILES_OF_THE_READER = {"cat.jpg": "chelsea", "dog.png": "coffee", "chelsea.jpg": "chelsea", "astronaut.png": "astronaut",
                       "photos/astronaut.png": "astronaut", "photos/rocket.jpg": "rocket", "segformer.onnx": None}


@dataclass(frozen=True)
class Block:
    language: str
    line: int  # the README line of its opening fence
    text: str

    @property
    def name(self) -> str:
        first = next((row.strip() for row in self.text.splitlines() if row.strip() and not row.startswith("#")), "")
        return f"L{self.line}:{first[:50]}"


def readme_blocks(language: str) -> list[Block]:
    """The fenced blocks of README.md in that language, in order."""
    blocks, rows = [], README.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(rows):
        opening = re.match(r"^```(\w*)\s*$", rows[index])
        if opening:
            end = next(j for j in range(index + 1, len(rows)) if rows[j].startswith("```"))
            if opening.group(1) == language:
                blocks.append(Block(language, index + 1, "\n".join(rows[index + 1:end]) + "\n"))
            index = end
        index += 1
    return blocks


def substituted(text: str) -> str:
    for printed, instead, _ in SUBSTITUTIONS:
        text = text.replace(printed, instead)
    return text


def not_run_reason(block: Block) -> str | None:
    return next((reason for line, reason in NOT_RUN.items() if line in block.text), None)


PYTHON_BLOCKS = readme_blocks("python")


def test_the_readme_has_python_blocks_and_every_not_run_entry_still_matches_one():
    assert len(PYTHON_BLOCKS) >= 8
    for line in NOT_RUN:
        assert any(line in block.text for block in PYTHON_BLOCKS), f"NOT_RUN entry matches no block: {line!r}"
    for printed, _, why in SUBSTITUTIONS:
        assert any(printed in block.text for block in PYTHON_BLOCKS), f"substitution used by no block: {printed!r}"


def _segmentation_onnx(path: Path) -> None:
    import torch

    from tests.support.segmentation_models import lraspp

    class ScoresOnly(torch.nn.Module):  # torchvision's segmentation models return {"out": scores}
        def __init__(self) -> None:
            super().__init__()
            self.inner = lraspp(classes=4)

        def forward(self, x):
            return self.inner(x)["out"]

    torch.onnx.export(ScoresOnly().eval(), torch.zeros(1, 3, 64, 64), str(path), dynamo=False, input_names=["x"],
                      output_names=["scores"], dynamic_axes={"x": {0: "N"}, "scores": {0: "N"}})


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """One namespace for the README's python blocks, run in a temporary folder holding the reader's files; the
    fusioncam cache in that folder too; Ray (started by the dataset blocks) stopped at the end."""
    import cv2
    from skimage import data

    folder = tmp_path_factory.mktemp("readme")
    for name, photo in FILES_OF_THE_READER.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        if photo is None:
            _segmentation_onnx(folder / name)
            continue
        rgb = getattr(data, photo)()
        cv2.imwrite(str(folder / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb)
    before = (os.getcwd(), os.environ.get("FUSIONCAM_CACHE"))
    os.environ["FUSIONCAM_CACHE"] = str(folder / "cache")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a Ray started by a block: loopback only
    os.chdir(folder)
    try:
        yield {"__name__": "__readme__"}
    finally:
        os.chdir(before[0])
        if before[1] is None:
            os.environ.pop("FUSIONCAM_CACHE", None)
        else:
            os.environ["FUSIONCAM_CACHE"] = before[1]
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda block: block.name)
def test_python_block_runs_as_printed(block, session):
    """Each block runs (with the substitutions) after the blocks above it, in their namespace."""
    reason = not_run_reason(block)
    if reason is not None:
        pytest.skip(f"listed in NOT_RUN: {reason}")
    code = compile(substituted(block.text), f"README.md:{block.line}", "exec")
    exec(code, session)  # noqa: S102 - the README's own code, the point of the test


def _command_lines(block: Block) -> list[tuple[int, str]]:
    """The `fusioncam ...` commands of a bash block (continuation lines joined, comments dropped)."""
    commands, current, start = [], "", 0
    for offset, row in enumerate(block.text.splitlines()):
        stripped = row.strip()
        if not current and "&& fusioncam " in stripped:  # `pip install ... && fusioncam demo ...`
            stripped = stripped[stripped.index("&& fusioncam ") + 3:]
        if not current and not stripped.startswith("fusioncam "):
            continue
        if not current:
            start = block.line + 1 + offset
        current += " " + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            commands.append((start, current.strip()))
            current = ""
    return commands


def _without_template_parts(command: str) -> str:
    """A synopsis line without its [optional] parts, comments and 'a|b' alternatives (the first one kept)."""
    command = re.sub(r"\s+#.*$", "", command)
    while re.search(r"\[[^\[\]]*\]", command):
        command = re.sub(r"\s*\[[^\[\]]*\]", "", command)
    command = command.replace("...", "")
    return re.sub(r"(\S+)\|\S+", r"\1", command)


COMMANDS = [(block, line, command) for language in ("bash", "") for block in readme_blocks(language)
            for line, command in _command_lines(block)]  # ("": fences without a language, e.g. a printed command)


@pytest.mark.parametrize("line, command", [(line, command) for _, line, command in COMMANDS],
                         ids=[f"L{line}" for _, line, _ in COMMANDS])
def test_command_lines_parse_with_fusioncam_s_parser(line, command, monkeypatch):
    """Every fusioncam command line of the README names a real subcommand with real options and valid choices."""
    from fusioncam.cli.main import build_parser

    words = shlex.split(_without_template_parts(substituted(command)), comments=True)
    assert words[0] == "fusioncam"
    for separator in ("&&", "|", ">", ";"):
        words = words[:words.index(separator)] if separator in words else words
    errors: list[str] = []
    monkeypatch.setattr("argparse.ArgumentParser.error", lambda self, message: errors.append(message) or
                        (_ for _ in ()).throw(SystemExit(2)))
    try:
        build_parser().parse_args(words[1:])
    except SystemExit:
        pass
    assert not errors, f"README.md:{line}: {command!r} is refused by the parser: {errors}"
    subcommand = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[words[1]]
    printed = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", re.sub(r"\s+#.*$", "", substituted(command))))
    unknown = sorted(printed - set(subcommand._option_string_actions))
    assert not unknown, f"README.md:{line}: `fusioncam {words[1]}` has no option {', '.join(unknown)}"


@pytest.mark.slow
@pytest.mark.parametrize("command", CHEAP_COMMANDS)
def test_cheap_command_lines_run_as_printed(command, session, capsys):
    """After the python blocks (same folder): the command runs and exits 0."""
    from fusioncam.cli.main import main

    assert any(command in printed for _, _, printed in COMMANDS), f"no longer in the README: {command!r}"
    assert main(shlex.split(substituted(command))[1:]) == 0, capsys.readouterr().err
