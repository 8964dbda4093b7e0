"""The README's tritonclient example runs as written against a real server."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from lite0 import CAT_JPG, IMAGES

README = IMAGES.parents[1] / "README.md"


def test_readme_tritonclient_example_runs(server_address: str, tmp_path: Path) -> None:
    (code,) = re.findall(r"```python tritonclient\n(.*?)```", README.read_text(), re.DOTALL)
    script = tmp_path / "example.py"
    script.write_text(code.replace("localhost:50052", server_address))
    shutil.copy(IMAGES / CAT_JPG.name, tmp_path / "cat.jpg")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    top3 = done.stdout.strip()
    assert top3.startswith("[b'0.81"), top3
    assert ":285:Egyptian cat' b'0.07" in top3 and ":282:tiger cat'" in top3
