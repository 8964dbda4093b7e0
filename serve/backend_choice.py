"""`--backend auto`: the fastest backend for a model on this machine, from `make compare`'s figures.

Falls back to a stated order when the model has never been compared here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from serve.backends import BACKENDS

__all__ = ["AUTO", "FALLBACK_ORDER", "BackendChoice", "choose_backend"]

AUTO = "auto"
# ONNX Runtime was the fastest for both bundled models on every machine we measured, then
# TorchScript (frozen), then eager.
FALLBACK_ORDER = ("onnxruntime", "torchscript", "eager")
COMPARE_FILE = Path("compare") / "compare.json"


@dataclass(frozen=True)
class BackendChoice:
    backend: str
    reason: str


def choose_backend(requested: str, artifacts: Path, model: str) -> BackendChoice:
    if requested != AUTO:
        return BackendChoice(requested, "chosen with --backend")
    measured = _served_throughput(artifacts / model / COMPARE_FILE)
    if measured:
        best = max(measured, key=measured.__getitem__)
        figures = ", ".join(f"{name} {rate:.0f}" for name, rate in sorted(measured.items()))
        return BackendChoice(best, f"fastest over gRPC in `make compare` (img/s: {figures})")
    order = " > ".join(FALLBACK_ORDER)
    return BackendChoice(FALLBACK_ORDER[0], f"no `make compare` figures; default order {order}")


def _served_throughput(path: Path) -> dict[str, float]:
    """Backend -> best images/s over gRPC in the compare results, or {} when there are none."""
    try:
        results = json.loads(path.read_text())
        return {
            name: max(run["images_per_s"] for run in data["end_to_end"]["runs"])
            for name, data in results["backends"].items()
            if name in BACKENDS
        }
    except (OSError, ValueError, KeyError, TypeError):
        return {}
