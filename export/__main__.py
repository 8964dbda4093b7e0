"""`python -m export --model NAME [--weights W]`: writes artifacts/<model>/ (export.pipeline)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from export.pipeline import ParityError, export_model
from export.zoo import DEFAULT_MODEL, MODELS, RANDOM, WeightsUnavailable

DEFAULT_ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a model to TorchScript and ONNX, checked against eager on real images.",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(MODELS))
    parser.add_argument(
        "--weights",
        default="",
        help=f"empty = the model's ImageNet weights; '{RANDOM}' = untrained; or a state dict path",
    )
    parser.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS)
    parser.add_argument("--force", action="store_true", help="export even when up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    args.artifacts.mkdir(parents=True, exist_ok=True)
    try:
        result = export_model(args.model, args.weights, args.artifacts, force=args.force)
    except (WeightsUnavailable, ParityError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    verb = "up to date" if result.skipped else "exported"
    print(f"{result.manifest.model}: {verb} in {result.folder} ({result.manifest.weights_source})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
