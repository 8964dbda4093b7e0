"""A torchgrpc server in a child process, for benchmarks that must not share the client's GIL."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["ServerProcess"]

ROOT = Path(__file__).resolve().parents[1]


class ServerProcess:
    """``with ServerProcess(["--backend", "torchscript"]) as server: server.address``.

    Starts ``python -m serve ... --port 0``, waits for its ready file (so the port is the one it
    really bound, with no probe-then-bind race) and stops it with SIGTERM on exit. This
    checkout's server also gets a free metrics port (``metrics_port``), so that servers started
    side by side don't compete for the default one (another revision's may not know the option).
    """

    def __init__(
        self,
        arguments: Sequence[str],
        *,
        module: str = "serve",
        timeout: float = 300.0,
        cwd: Path | None = None,
        python: str | None = None,
    ) -> None:
        """``cwd``: the checkout whose code to run (default: this one); ``python``: the
        interpreter that runs it (default: this one; another virtualenv's, for clients that
        can't share ours)."""
        self._arguments = list(arguments)
        self._python = python or sys.executable
        self._module = module
        self._cwd = cwd
        self._timeout = timeout
        self._folder = tempfile.TemporaryDirectory(prefix="torchgrpc-")
        self._ready = Path(self._folder.name) / "ready.json"
        self._log = Path(self._folder.name) / "server.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0
        # This checkout's server's metrics listener; 0 for the others.
        self.metrics_port = 0
        self.startup_seconds = 0.0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("not started")
        return self._process.pid

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:  # failed or interrupted: no server or folder left behind
            self._stop()
            self._folder.cleanup()
            raise
        return self

    def _start(self) -> None:
        started = time.perf_counter()
        this_server = self._module == "serve" and (self._cwd or ROOT).resolve() == ROOT
        metrics = ["--metrics-port", "-1"] if this_server else []
        command = [self._python, "-m", self._module, "--port", "0", "--ready-file",
                   str(self._ready), *metrics, *self._arguments]  # fmt: skip
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=self._cwd
            )
        while not self._ready.exists():
            if self._process.poll() is not None:
                raise RuntimeError(f"server exited at start-up:\n{self._log.read_text()}")
            if time.perf_counter() - started > self._timeout:
                raise TimeoutError(f"server not ready in {self._timeout} s")
            time.sleep(0.05)
        self.startup_seconds = time.perf_counter() - started
        ready = json.loads(self._ready.read_text())
        self.port = int(ready["port"])
        self.metrics_port = int(ready.get("metrics_port", 0))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()
        self._folder.cleanup()

    def rss_bytes(self) -> int:
        """The server's resident memory, from /proc (Linux)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS not found")

    def wait(self, timeout: float) -> int:
        """The server's exit code, once it has exited (subprocess.TimeoutExpired after
        ``timeout`` seconds)."""
        if self._process is None:
            raise RuntimeError("the server is not started")
        return self._process.wait(timeout=timeout)

    def output(self) -> str:
        """What the server has written so far (its stdout and stderr)."""
        return self._log.read_text(errors="replace")

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
