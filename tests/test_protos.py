"""The generated code in serve/pb/ is exactly what protos/generate.py makes from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def generated_files(root: Path) -> dict[str, bytes]:
    folder = root / "serve" / "pb"
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)], check=True
    )
    fresh = generated_files(tmp_path)
    assert fresh, "protos/generate.py generated nothing"
    assert generated_files(ROOT) == fresh, "serve/pb/ is stale: run `make protos`"
