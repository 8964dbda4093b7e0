"""The README's Python example runs as written against a real server."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import CAT_JPG, COFFEE_JPG, ROOT, ServerThread


def test_readme_python_example_runs(server: ServerThread, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    script = tmp_path / "example.py"
    script.write_text(code.replace("localhost:50052", server.address))
    shutil.copy(CAT_JPG, tmp_path / "cat.jpg")
    shutil.copy(COFFEE_JPG, tmp_path / "coffee.jpg")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
        timeout=60, check=True, env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert lines[0].startswith("[('Egyptian cat', 0.81")
    assert lines[1].startswith("[('espresso', 0.89")
    assert "Label(class_id=285, name='Egyptian cat'" in lines[2]
