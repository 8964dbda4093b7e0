"""What an export depends on, as one hash: the server compares it to spot stale artifacts.

Kept free of heavy imports (versions come from package metadata) so the server can check it
without loading the exporter's own dependencies.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from export.manifest import MANIFEST_VERSION

__all__ = ["ONNX_OPSET", "export_fingerprint", "exporter_installed", "library_versions"]

# Opset 17 is supported by every ONNX Runtime of the last years and has all ops these CNNs need.
ONNX_OPSET = 17
_PACKAGE = Path(__file__).resolve().parent
# The model definitions, conversions and entry layout: a change to them changes what an export
# writes.
_CODE = ("zoo/*.py", "convert.py", "pipeline.py", "triton_config.py", "manifest.py")


def library_versions() -> dict[str, str]:
    """The exporting libraries' versions; "absent" for one not installed (a serving-only
    install: its exports were made elsewhere, and only their files' hashes can be checked)."""
    return {name: _version(name) for name in ("torch", "onnx", "onnxruntime")}


def exporter_installed() -> bool:
    """Whether this install can export (and so tell whether an export is stale)."""
    return "absent" not in library_versions().values()


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"


def export_fingerprint(model: str, weights_sha256: str) -> str:
    """A change in the weights, the model code, the opset, the manifest layout or the libraries
    makes a different fingerprint, and so marks earlier artifacts stale."""
    inputs = {
        "model": model,
        "weights": weights_sha256,
        "code": _code_sha256(),
        "opset": ONNX_OPSET,
        "manifest_version": MANIFEST_VERSION,
        **library_versions(),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _code_sha256() -> str:
    digest = hashlib.sha256()
    for source in sorted(path for pattern in _CODE for path in _PACKAGE.glob(pattern)):
        digest.update(source.read_bytes())
    return digest.hexdigest()
