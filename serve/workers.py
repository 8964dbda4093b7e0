"""`--workers N`: N server processes sharing one port through SO_REUSEPORT.

One process's event loop and GIL top out at a few thousand small requests per second; on a machine
with many cores, several processes (each with its own models) spread the load, and the kernel
balances connections between them. The parent only starts, watches and stops the workers.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import FrameType

from serve.config import LOOPBACK, ServerConfig
from serve.errors import START_UP_ERRORS
from serve.logs import configure_logging
from serve.server import run, write_atomically

__all__ = ["run_workers"]

log = logging.getLogger("serve")
START_TIMEOUT = 600.0


@contextmanager
def _reserved_port(config: ServerConfig) -> Iterator[int]:
    """Binds (without listening) a SO_REUSEPORT socket so that port 0 becomes one concrete port
    every worker can share, and no other program takes it while the workers start."""
    host = "127.0.0.1" if config.host == LOOPBACK else config.host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((host, config.port))
        yield int(holder.getsockname()[1])


def _worker_ready_file(folder: Path, index: int) -> Path:
    return folder / f"worker-{index}.json"


def _serve_worker(config: ServerConfig) -> None:
    # A spawned process starts with logging unconfigured: lines as the parent's, naming the worker.
    configure_logging(config.log_level, config.log_format, process_name=True)
    try:
        run(config)
    except START_UP_ERRORS as error:
        # One line, as `python -m serve` says it, rather than multiprocessing's traceback (which
        # is not a JSON line).
        log.error("%s", error)
        raise SystemExit(1) from None


def run_workers(config: ServerConfig, ready_folder: Path) -> None:
    """Runs ``config.workers`` servers on one port until SIGINT/SIGTERM, then stops them all."""
    context = multiprocessing.get_context("spawn")  # no fork: PyTorch and gRPC threads
    processes: list[multiprocessing.process.BaseProcess] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                process.terminate()

    def forward(signum: int, frame: FrameType | None) -> None:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    handlers = {signal.SIGINT: stop, signal.SIGTERM: stop}
    if config.auth_token_file is not None:
        # Each worker re-reads the token file (without one, SIGHUP ends the process as usual).
        handlers[signal.SIGHUP] = forward
    # Installed before the first worker starts: a signal during start-up must not end the
    # parent alone, leaving its workers serving with nobody to stop them.
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        with _reserved_port(config) as port:
            for index in range(config.workers):
                # Each worker has metrics of its own, so a port of its own (0 and -1 stay as
                # they are).
                metrics_port = config.metrics_port + (index if config.metrics_port > 0 else 0)
                worker_config = replace(
                    config,
                    port=port,
                    metrics_port=metrics_port,
                    ready_file=_worker_ready_file(ready_folder, index),
                )
                process = context.Process(
                    target=_serve_worker, args=(worker_config,), name=f"worker-{index}"
                )
                process.start()
                processes.append(process)
            _wait_until_ready(ready_folder, processes)
        log.info("%d workers serving on port %d", config.workers, port)
        if config.ready_file is not None:
            pids = [p.pid for p in processes]
            write_atomically(config.ready_file, json.dumps({"port": port, "workers": pids}))
        for worker in processes:
            worker.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_until_ready(
    folder: Path, processes: Sequence[multiprocessing.process.BaseProcess]
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    pending = set(range(len(processes)))
    while pending:
        pending = {i for i in pending if not _worker_ready_file(folder, i).exists()}
        if any(not p.is_alive() for p in processes):
            for process in processes:
                process.terminate()
            raise RuntimeError("a worker exited during start-up; see its log above")
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers not ready after {START_TIMEOUT:.0f} s")
        time.sleep(0.05)
