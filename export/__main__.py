"""`python -m export`: the built-in models into the repository (export.pipeline), or, with
`--wrap FILE --name NAME`, an existing model file made a repository entry (export.wrap)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from export.manifest import (
    CHANNEL_ORDERS,
    LAYOUTS,
    Preprocessing,
    PreprocessingError,
    parse_number,
    parse_triple,
)
from export.pipeline import ParityError, export_model
from export.wrap import WrapError, WrapRequest, check_with_server, parse_tensor, wrap
from export.zoo import DEFAULT_MODEL, MODELS, RANDOM, WeightsUnavailable

T = TypeVar("T")
DEFAULT_ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
# The options only --wrap takes (their destinations), and those only the export takes.
_WRAP_ONLY = (
    "name",
    "version",
    "image",
    "labels",
    "mean",
    "std",
    "scale",
    "resize_shorter",
    "resize",
    "channel_order",
    "layout",
    "softmax",
    "max_batch_size",
    "input",
    "output",
    "factory",
)
_EXPORT_ONLY = ("model", "weights")
# The pre-processing options, which describe --image's input.
_IMAGE_ONLY = ("mean", "std", "scale", "resize_shorter", "resize", "channel_order", "layout")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    given = [dest for dest in (*_WRAP_ONLY, *_EXPORT_ONLY) if _given(parser, args, dest)]
    if args.wrap is None:
        _refuse(parser, [dest for dest in given if dest in _WRAP_ONLY], "only with --wrap")
    else:
        _refuse(parser, [dest for dest in given if dest in _EXPORT_ONLY], "not with --wrap")
        if args.image is None:
            _refuse(parser, [dest for dest in given if dest in _IMAGE_ONLY], "only with --image")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return _export(args) if args.wrap is None else _wrap(parser, args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a built-in model to TorchScript and ONNX, checked against eager on "
        "real images; or, with --wrap, make a model file of your own a repository entry.",
    )
    parser.add_argument(
        "--repository",
        "--artifacts",
        dest="repository",
        type=Path,
        default=DEFAULT_ARTIFACTS,
        metavar="DIR",
        help="the model repository (default: artifacts/)",
    )
    parser.add_argument(
        "--force", action="store_true", help="export even when up to date; replace a version"
    )
    export = parser.add_argument_group("the built-in models")
    export.add_argument(
        "--model", choices=sorted(MODELS), help=f"the model to export (default {DEFAULT_MODEL})"
    )
    export.add_argument(
        "--weights",
        default="",
        help=f"empty = the model's ImageNet weights; '{RANDOM}' = untrained; or a state dict path",
    )
    _add_wrap_options(parser.add_argument_group("a model file of your own (--wrap)"))
    return parser


def _add_wrap_options(group: argparse._ArgumentGroup) -> None:
    add = group.add_argument
    add("--wrap", type=Path, metavar="FILE", help=".onnx, .pt, .pt2, or a state dict + --factory")
    add("--name", help="the model's name: its folder in the repository")
    add("--version", type=int, default=1, help="the version folder to write (default 1)")
    add(
        "--image",
        type=_argument(parse_size),
        metavar="HxW",
        help="an image model: its first input's size",
    )
    add("--labels", type=Path, metavar="FILE", help="class names, one a line")
    add("--mean", type=_argument(parse_triple), metavar="A,B,C", help="subtracted after --scale")
    add("--std", type=_argument(parse_triple), metavar="A,B,C", help="divided by after --mean")
    add(
        "--scale",
        type=_argument(parse_number),
        help="multiplies the 0-255 pixel values first (1/255)",
    )
    add("--resize-shorter", type=int, metavar="N", help="shorter side to N, then centre crop")
    add("--resize", metavar="FILTER", help="the resize filter (default bilinear)")
    add("--channel-order", choices=CHANNEL_ORDERS, help="default RGB")
    add("--layout", choices=LAYOUTS, help="the image input's layout (default NCHW)")
    add("--softmax", action="store_true", help="serve the labelled output's softmax")
    add("--max-batch-size", type=int, metavar="N", help="0 for a model without a batch axis")
    for option, what in (
        ("--input", "an input (.pt, state dicts), say input:FP32:3,224,224"),
        ("--output", "an output, say logits:FP32:1000"),
    ):
        add(
            option,
            type=_argument(parse_tensor),
            action="append",
            default=[],
            metavar="NAME:DATATYPE:DIMS",
            help=f"{what}; dims without the batch axis; repeat for each",
        )
    add("--factory", metavar="PACKAGE.MODULE:FUNCTION", help="builds the state dict's module")


def _export(args: argparse.Namespace) -> int:
    args.repository.mkdir(parents=True, exist_ok=True)
    model = args.model or DEFAULT_MODEL
    try:
        result = export_model(model, args.weights, args.repository, force=args.force)
    except (WeightsUnavailable, ParityError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    verb = "up to date" if result.skipped else "exported"
    print(f"{result.manifest.model}: {verb} in {result.folder} ({result.manifest.weights_source})")
    return 0


def _wrap(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if not args.name:
        parser.error("--wrap needs --name")
    request = WrapRequest(
        file=args.wrap,
        name=args.name,
        repository=args.repository,
        version=args.version,
        preprocessing=_preprocessing(parser, args),
        labels=args.labels,
        softmax=args.softmax,
        max_batch_size=args.max_batch_size,
        inputs=tuple(args.input),
        outputs=tuple(args.output),
        factory=args.factory or "",
        force=args.force,
    )
    try:
        result = wrap(request, check_with_server)
    except (WrapError, OSError) as exc:
        print(f"wrap failed: {exc}", file=sys.stderr)
        return 1
    print(f"{args.name}: wrote {result.model_file}; checked: {result.summary}")
    if result.runs_code:
        print(f"{args.name} runs code of yours: serve it with --allow-python-factories")
    return 0


def _preprocessing(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> Preprocessing | None:
    if args.image is None:
        return None
    height, width = args.image
    chosen = {dest: getattr(args, dest) for dest in _IMAGE_ONLY if getattr(args, dest) is not None}
    try:
        return Preprocessing(height, width, **chosen)
    except PreprocessingError as error:
        parser.error(f"{_option(error.field)}: {error}")


def _given(parser: argparse.ArgumentParser, args: argparse.Namespace, dest: str) -> bool:
    return bool(getattr(args, dest) != parser.get_default(dest))


def _refuse(parser: argparse.ArgumentParser, dests: list[str], reason: str) -> None:
    if dests:
        parser.error(f"{', '.join(_option(dest) for dest in dests)}: {reason}")


def _option(dest: str) -> str:
    return f"--{dest.replace('_', '-')}"


def _argument(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` as an argparse type: its ValueError's message becomes argparse's."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = parse.__name__
    return convert


def parse_size(text: str) -> tuple[int, int]:
    """``HxW``, say ``224x224``."""
    height, _, width = text.lower().partition("x")
    try:
        size = (int(height), int(width))
    except ValueError:
        raise ValueError(f"{text!r} is not HxW (say 224x224)") from None
    if min(size) < 1:
        raise ValueError(f"{text!r}: height and width must be positive")
    return size


if __name__ == "__main__":
    sys.exit(main())
