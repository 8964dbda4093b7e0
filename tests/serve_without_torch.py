"""`python -m tests.serve_without_torch ARGS`: the server, in a process where PyTorch can't be
imported (as on an install without the `torch` extra)."""

from __future__ import annotations

import sys

# A None entry makes `import torch` raise ImportError, as if it were not installed.
for _name in ("torch", "torchvision", "onnx"):
    sys.modules[_name] = None  # type: ignore[assignment]

from serve.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
