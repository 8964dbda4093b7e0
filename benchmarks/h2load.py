"""gRPC load from h2load (Debian's ``nghttp2-client``), the standard HTTP/2 load tool.

h2load knows nothing of gRPC: it POSTs the same bytes again and again. We hand it one request
already framed the way gRPC frames messages (``grpc_frame``) and the two headers gRPC needs, and
read back what it can tell us. It drives a closed loop like ``benchmarks.loadgen``: with ``-c 1
-m N`` one HTTP/2 connection keeps N requests outstanding, starting the next as one ends, as our
load generator's N workers do on their single channel.

What h2load can and cannot see of a gRPC call:
- A gRPC server answers HTTP 200 even when the call fails: the status is ``grpc-status``, sent in
  the trailers, or, when the call fails before any reply, in the response headers themselves (a
  "trailers-only" response). h2load counts both as succeeded.
- h2load's ``-v`` prints every response's headers, so trailers-only failures are counted here, one
  by one, from the ``grpc-status`` lines it prints: an unknown method (12, UNIMPLEMENTED), a
  request the server rejects (3, INVALID_ARGUMENT), a full queue (8, RESOURCE_EXHAUSTED)... Every
  failure of a unary call is trailers-only unless the server sent its headers first.
- It cannot see a status sent in trailers after the response headers (Debian 12's h2load, 1.52,
  prints no trailers; where a later one does, their non-zero statuses are counted too), nor what
  the reply says: a wrong answer with status OK is a success.
- It cannot tell which logged request was a gRPC failure, so ``latencies`` hold every request
  that ended in HTTP 2xx, failures included; ``errors`` and ``images`` do leave them out.
- Transport failures (a reset stream, a non-2xx status from a proxy) are h2load's own ``failed``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.bench import WARM_UP_SECONDS
from benchmarks.loadgen import LoadResult

__all__ = ["H2LoadError", "H2LoadResult", "grpc_frame", "measure"]

INSTALL_HINT = "apt-get install nghttp2-client"
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")

_REQUESTS = re.compile(
    r"requests: \d+ total, \d+ started, \d+ done, (?P<succeeded>\d+) succeeded, "
    r"(?P<failed>\d+) failed, (?P<errored>\d+) errored"
)
_STATUS_CODES = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_FINISHED = re.compile(r"finished in (?P<value>[\d.]+)(?P<unit>us|ms|s),")
_GRPC_STATUS = re.compile(r"^\[stream_id=\d+\] grpc-status: (\d+)$", re.MULTILINE)
# Printed by h2load's worker thread (one: we never pass -t) in -D mode, on the same stdout as the
# headers, so the failures between them are the ones the summary counts.
_MAIN_STARTED = "Main benchmark duration is started"
_MAIN_OVER = "Main benchmark duration is over"
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


class H2LoadError(RuntimeError):
    """h2load is missing, refused its arguments, or printed what we can't read."""


@dataclass
class H2LoadResult(LoadResult):
    """A ``LoadResult`` (printed the same way) with h2load's own counts beside it."""

    # h2load's summary: HTTP 2xx/3xx answers, and the rest (`failed` includes `errored`: streams
    # reset or cut before an answer).
    succeeded: int = 0
    failed: int = 0
    errored: int = 0
    status_2xx: int = 0
    non_2xx: int = 0
    # Failed gRPC calls h2load counted as succeeded: grpc-status code -> how many.
    grpc_statuses: dict[int, int] = field(default_factory=dict)


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: not compressed (0), 4-byte big-endian length, the bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def measure(
    address: str,
    method: str,
    request: bytes,
    concurrency: int,
    *,
    requests: int | None = None,
    duration: float | None = None,
    warm_up: float = WARM_UP_SECONDS,
    images_per_request: int = 1,
) -> H2LoadResult:
    """h2load's closed loop of ``concurrency`` outstanding calls to ``method``
    (``/package.Service/Method``) at ``address`` (``HOST:PORT``), each sending the serialized
    ``request``, until ``requests`` have ended or for ``duration`` seconds, after ``warm_up``
    seconds of the same load."""
    if (requests is None) == (duration is None):
        raise ValueError("give exactly one of requests and duration")
    if not method.startswith("/"):
        raise ValueError(f"method {method!r}: expected /package.Service/Method")
    executable = shutil.which("h2load")
    if executable is None:
        raise H2LoadError(f"h2load is not installed: {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="torchgrpc-h2load-") as folder:
        data, log = Path(folder) / "request.bin", Path(folder) / "requests.tsv"
        data.write_bytes(grpc_frame(request))
        command = [executable, "-v", "-c", "1", "-m", str(concurrency), "-d", str(data),
                   *(f"--header={header}" for header in GRPC_HEADERS),
                   f"http://{address}{method}"]  # fmt: skip
        if duration is not None:
            timing = ["-D", _milliseconds(duration)]
            if warm_up > 0:
                timing += ["--warm-up-time", _milliseconds(warm_up)]
            output = _run([*command, *timing, f"--log-file={log}"])
            seconds = duration
        else:
            if warm_up > 0:  # h2load only warms up timed runs: a separate one, not logged.
                _run([*command, "-D", _milliseconds(warm_up)])
            output = _run([*command, "-n", str(requests), f"--log-file={log}"])
            seconds = _finished_seconds(output)
        return _result(output, log.read_text(), concurrency, seconds, images_per_request)


def _milliseconds(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise H2LoadError(f"h2load exited with {done.returncode}:\n{done.stderr}{done.stdout}")
    return done.stdout


def _result(
    output: str, log: str, concurrency: int, seconds: float, images_per_request: int
) -> H2LoadResult:
    counts, codes = _REQUESTS.search(output), _STATUS_CODES.search(output)
    if counts is None or codes is None:
        raise H2LoadError(f"no summary in h2load's output:\n{output[-2000:]}")
    statuses = Counter(int(code) for code in _GRPC_STATUS.findall(_main_phase(output)))
    del statuses[0]
    grpc_errors = sum(statuses.values())
    succeeded, failed = int(counts["succeeded"]), int(counts["failed"])
    two_xx, *others = (int(count) for count in codes.groups())
    return H2LoadResult(
        concurrency=concurrency,
        seconds=seconds,
        images=max(0, succeeded - grpc_errors) * images_per_request,
        errors=failed + grpc_errors,
        latencies=_latencies(log),
        succeeded=succeeded,
        failed=failed,
        errored=int(counts["errored"]),
        status_2xx=two_xx,
        non_2xx=sum(others),
        grpc_statuses=dict(sorted(statuses.items())),
    )


def _main_phase(output: str) -> str:
    """The part of a timed run's output printed while it measured: all of an untimed one's."""
    start = output.find(_MAIN_STARTED)
    if start == -1:
        return output
    end = output.find(_MAIN_OVER, start)
    return output[start:] if end == -1 else output[start:end]


def _latencies(log: str) -> list[float]:
    """Seconds from start to end of each logged request answered with HTTP 2xx. The log's rows:
    start time (us since the epoch), HTTP status (-1 for a failed stream), duration (us)."""
    latencies = []
    for row in log.splitlines():
        _, status, microseconds = row.split("\t")[:3]
        if 200 <= int(status) < 300:
            latencies.append(int(microseconds) / 1e6)
    return latencies


def _finished_seconds(output: str) -> float:
    finished = _FINISHED.search(output)
    if finished is None:
        raise H2LoadError(f"no 'finished in' in h2load's output:\n{output[-2000:]}")
    return float(finished["value"]) * _UNITS[finished["unit"]]
