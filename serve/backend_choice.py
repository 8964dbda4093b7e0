"""Which of a model's formats runs: config.pbtxt's choice, else ``--backend``, else ``auto``.

``auto`` takes the fastest backend for the model on this machine from `make compare`'s figures
(``<model folder>/compare/compare.json``), and falls back to a stated order when the model has
never been compared here. Only the formats the model's folder holds are candidates.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AUTO", "FALLBACK_ORDER", "BackendChoice", "choose_backend"]

AUTO = "auto"
# ONNX Runtime was the fastest for both bundled models on every machine we measured, then
# TorchScript (frozen), then eager. A torch.export program runs through the same PyTorch
# operators as eager, without TorchScript's graph optimisations.
FALLBACK_ORDER = ("onnxruntime", "torchscript", "torch_export", "eager")
COMPARE_FILE = Path("compare") / "compare.json"


@dataclass(frozen=True)
class BackendChoice:
    backend: str
    reason: str


def choose_backend(
    requested: str, available: Sequence[str], configured: str | None, folder: Path
) -> BackendChoice:
    """The backend for a model folder holding ``available`` formats. ``configured`` is what its
    config.pbtxt names (None: nothing), ``requested`` the server's ``--backend``."""
    if configured is not None:
        return BackendChoice(configured, "named in config.pbtxt")
    if requested in available:
        return BackendChoice(requested, "chosen with --backend")
    unavailable = (
        f"--backend {requested} has no file in this model's folder; " if requested != AUTO else ""
    )
    measured = {
        name: rate
        for name, rate in _served_throughput(folder / COMPARE_FILE).items()
        if name in available
    }
    if measured:
        best = max(measured, key=measured.__getitem__)
        figures = ", ".join(f"{name} {rate:.0f}" for name, rate in sorted(measured.items()))
        return BackendChoice(
            best, f"{unavailable}fastest over gRPC in `make compare` (img/s: {figures})"
        )
    order = [name for name in FALLBACK_ORDER if name in available]
    return BackendChoice(
        order[0], f"{unavailable}no `make compare` figures; default order {' > '.join(order)}"
    )


def _served_throughput(path: Path) -> dict[str, float]:
    """Backend -> best images/s over gRPC in the compare results, or {} when there are none."""
    try:
        results = json.loads(path.read_text())
        return {
            name: max(run["images_per_s"] for run in data["end_to_end"]["runs"])
            for name, data in results["backends"].items()
            if name in FALLBACK_ORDER
        }
    except (OSError, ValueError, KeyError, TypeError):
        return {}
