"""`make compare` end to end, with few iterations: table, JSON and chart, for every backend."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from export.pipeline import ExportResult
from tests.conftest import ROOT


def test_compare_writes_table_json_and_chart(lite0_export: ExportResult, tmp_path: Path) -> None:
    shutil.copytree(lite0_export.folder, tmp_path / "efficientnet_lite0")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare", "--artifacts", str(tmp_path),
         "--iterations", "2", "--requests", "6"],
        capture_output=True, text=True, cwd=ROOT, timeout=600, check=True,
    )  # fmt: skip
    folder = tmp_path / "efficientnet_lite0" / "compare"
    results = json.loads((folder / "compare.json").read_text())
    assert set(results["backends"]) == {"onnxruntime", "torchscript", "eager"}
    for data in results["backends"].values():
        assert [row["batch"] for row in data["in_process"]] == [1, 8]
        assert all(row["images_per_s"] > 0 for row in data["in_process"])
        runs = data["end_to_end"]["runs"]
        assert [run["concurrency"] for run in runs] == [1, 16]
        assert all(run["requests"] == 6 and run["errors"] == 0 for run in runs)
        assert data["end_to_end"]["startup_s"] > 0
    assert (folder / "compare.png").read_bytes().startswith(b"\x89PNG")
    table = done.stdout.splitlines()
    assert table[1].startswith("| backend | start-up s |")
    assert {line.split("|")[1].strip() for line in table[3:6]} == set(results["backends"])
    assert "compare efficientnet_lite0" in done.stderr  # the progress bar
