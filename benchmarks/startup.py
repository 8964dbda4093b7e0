"""Start-up time and memory per model and backend: one server process per (model, backend), from
spawn until it serves, and its resident memory then.

    python -m benchmarks.startup --model-repository DIR [--models a,b] [--json out.json]

Every model of the repository (or ``--models``) on every backend its folder has a file for.
Models run one at a time: the figures are each model's own, with the server's base cost in
them (the first row, a server with an empty repository, shows that base).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.process import ServerProcess
from serve.config import DEFAULT_ARTIFACTS
from serve.repository import ModelEntry, scan

__all__ = ["main"]


def measure(repository: Path, model: str, backend: str, extra: list[str]) -> dict[str, object]:
    """``model`` "" with an empty ``repository``: the server alone."""
    models = ["--model", model] if model else []
    arguments = [
        "--model-repository", str(repository), *models, "--backend", backend,
        "--model-control", "explicit", *extra,
    ]  # fmt: skip
    with ServerProcess(arguments) as server:
        return {
            "model": model,
            "backend": backend,
            "startup_s": round(server.startup_seconds, 2),
            "rss_mb": round(server.rss_bytes() / 2**20),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__)
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_ARTIFACTS)
    parser.add_argument("--models", default="", help="comma-separated; default: every model")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--allow-python-factories", action="store_true", help="passed on to the server"
    )
    args = parser.parse_args(argv)
    wanted = [m for m in args.models.split(",") if m]
    extra = ["--allow-python-factories"] if args.allow_python_factories else []
    entries = [
        e for e in scan(args.model_repository)
        if isinstance(e, ModelEntry) and (not wanted or e.name in wanted)
    ]  # fmt: skip
    print(f"{'model':28} {'backend':14} {'start-up s':>10} {'RSS MB':>8}")
    with tempfile.TemporaryDirectory() as empty:
        base = measure(Path(empty), "", "auto", extra)
    print(f"{'(no model)':28} {'-':14} {base['startup_s']:>10} {base['rss_mb']:>8}")
    rows = [base]
    for entry in entries:
        for backend in entry.backends:
            row = measure(args.model_repository, entry.name, backend, extra)
            rows.append(row)
            print(f"{entry.name:28} {backend:14} {row['startup_s']:>10} {row['rss_mb']:>8}")
            sys.stdout.flush()
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
