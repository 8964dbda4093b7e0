"""Builds the tritonclient suite's model repository, as a user would with ``python -m export``.

    PYTHONPATH=. .venv/bin/python tests/tritonclient/build_repository.py FOLDER

Runs under the server's Python (torch, torchvision). FOLDER becomes a repository of five models
(tests/tritonclient/user_models.py names them): the built-in efficientnet_lite0 (the main suite's
export, hard-linked in), a torchvision classifier traced to TorchScript, a two-input tensor model in
ONNX, a torch.export program, each made an entry by ``--wrap`` (which checks that it loads and
runs), and a model whose model.onnx is garbage. Beside FOLDER go ``expected.json``, the eager
modules' answers to user_models' fixed inputs, and the pair model's version 2 for the swap test.
FOLDER must be on the file system of .cache/test-artifacts (hard links: the server refuses a
symlink leading out of its repository).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms
from user_models import (
    BROKEN,
    CLASSIFIER,
    CLASSIFIER_IMAGE,
    CLASSIFIER_LABELS,
    EXPECTED_NAME,
    LITE0,
    PAIR,
    PAIR_BATCH,
    PAIR_VERSION_2_NAME,
    PROGRAM,
    PROGRAM_BATCHES,
    classifier_input,
    pair_inputs,
    program_input,
)

from export.__main__ import main as export_main
from export.convert import torchscript_is_wanted

ROOT = Path(__file__).resolve().parents[2]
LITE0_EXPORT = ROOT / ".cache" / "test-artifacts" / LITE0
IMAGES = ROOT / "tests" / "images"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Pair(nn.Module):
    """Two inputs of two datatypes, two outputs of two shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mixed = self.linear(a) * b.to(a.dtype)
        return mixed, b.sum(dim=1, keepdim=True)


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 3)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.relu(self.linear(features)), features.norm(dim=1, keepdim=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the repository to build (must not exist)")
    repository = parser.parse_args().folder.resolve()
    if repository.exists():
        parser.error(f"{repository} exists")
    repository.mkdir(parents=True)
    if not (LITE0_EXPORT / "manifest.json").exists():
        run_export(["--model", LITE0, "--artifacts", str(LITE0_EXPORT.parent)])
    # Hard links: a symlink leading out of the repository is refused.
    shutil.copytree(LITE0_EXPORT, repository / LITE0, copy_function=os.link)
    with tempfile.TemporaryDirectory() as scratch:
        expected = {
            CLASSIFIER: build_classifier(repository, Path(scratch)),
            PAIR: build_pair(repository, Path(scratch)),
            PROGRAM: build_program(repository, Path(scratch)),
        }
    (repository / BROKEN / "1").mkdir(parents=True)
    (repository / BROKEN / "1" / "model.onnx").write_bytes(b"this is not an ONNX model\n")
    (repository.parent / EXPECTED_NAME).write_text(json.dumps(expected, indent=1))


def build_classifier(repository: Path, scratch: Path) -> dict[str, object]:
    """MobileNetV3-Small with seeded random weights, traced; its answers for the fixed input and
    for the test image pre-processed as torchvision would."""
    model = random_classifier()
    traced = scratch / "classifier.pt"
    with torchscript_is_wanted(), torch.no_grad():
        torch.jit.trace(model, torch.zeros(1, 3, 224, 224)).save(str(traced))  # type: ignore[no-untyped-call]
    labels = scratch / "labels.txt"
    labels.write_text("".join(f"{label}\n" for label in CLASSIFIER_LABELS))
    run_export([
        "--wrap", str(traced), "--name", CLASSIFIER, "--repository", str(repository),
        "--image", "224x224", "--labels", str(labels), "--scale", "1/255",
        "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)),
        "--resize-shorter", "256", "--softmax", "--input", "input__0:FP32:3,224,224",
    ])  # fmt: skip
    preprocess = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])  # fmt: skip
    image = preprocess(Image.open(IMAGES / CLASSIFIER_IMAGE).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        tensor = model(torch.from_numpy(classifier_input())).softmax(dim=1)
        photo = model(image).softmax(dim=1)
    return {"tensor": tensor.tolist(), "image": photo[0].tolist()}


def random_classifier() -> nn.Module:
    """torchvision's init leaves a random MobileNet answering 0.1 for every class (its activations
    vanish); batch-norm statistics measured on noise and a wider last layer make its answers
    differ by input, as a trained model's do."""
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=len(CLASSIFIER_LABELS))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a plain average over the calibration batch
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 224, 224))
        nn.init.normal_(model.classifier[-1].weight, std=0.5)
    return model.eval()


def build_pair(repository: Path, scratch: Path) -> dict[str, object]:
    """Version 1 in the repository, version 2 (other weights) beside it; each one's answers."""
    a, b = (torch.from_numpy(x) for x in pair_inputs(PAIR_BATCH))
    answers: dict[str, object] = {}
    for version, path in ((1, scratch / "pair.onnx"), (2, repository.parent / PAIR_VERSION_2_NAME)):
        torch.manual_seed(version)
        model = Pair().eval()
        with torchscript_is_wanted(), torch.no_grad():
            torch.onnx.export(
                model,
                (a, b),
                str(path),
                input_names=["a", "b"],
                output_names=["mixed", "total"],
                dynamic_axes={name: {0: "batch"} for name in ("a", "b", "mixed", "total")},
                opset_version=17,
                dynamo=False,
            )
            mixed, total = model(a, b)
        answers[str(version)] = {"mixed": mixed.tolist(), "total": total.tolist()}
    run_export(["--wrap", str(scratch / "pair.onnx"), "--name", PAIR,
                "--repository", str(repository)])  # fmt: skip
    return answers


def build_program(repository: Path, scratch: Path) -> dict[str, object]:
    torch.manual_seed(3)
    model = Head().eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    example = (torch.from_numpy(program_input(2)),)
    program = torch.export.export(model, example, dynamic_shapes={"features": {0: batch}})
    path = scratch / "program.pt2"
    torch.export.save(program, path)
    run_export(["--wrap", str(path), "--name", PROGRAM, "--repository", str(repository)])
    answers: dict[str, object] = {}
    for size in PROGRAM_BATCHES:
        with torch.no_grad():
            first, second = model(torch.from_numpy(program_input(size)))
        answers[str(size)] = {"output__0": first.tolist(), "output__1": second.tolist()}
    return answers


def run_export(argv: list[str]) -> None:
    """``python -m export ARGV``, in this process (torch is imported once)."""
    if export_main(argv) != 0:
        raise SystemExit(f"python -m export {' '.join(argv)} failed")


if __name__ == "__main__":
    main()
