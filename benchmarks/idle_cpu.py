"""`python -m benchmarks.idle_cpu`: the server's CPU time per request when it is nearly idle.

A server that is rarely busy should cost little more CPU per request than a saturated one, or it
pays several times over on a shared node or under a container's CPU limit: thread pools that spin
after each request, instead of sleeping, cost nothing at saturation and dominate at 10 requests a
second. This starts a server process, sends it single-image tutorial requests at fixed rates (open
loop) and at saturation (closed loop), reads the server's CPU time (user + system, all its
threads, from /proc/<pid>/stat) before and after each, and prints the CPU milliseconds per request
of each and their ratio to saturation's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from benchmarks.bench import WARM_UP_SECONDS, sender
from benchmarks.loadgen import LoadResult, closed_loop, open_loop
from benchmarks.process import ServerProcess
from export.catalog import DEFAULT_MODEL, SAMPLE_IMAGES
from serve.config import DEFAULT_ARTIFACTS

__all__ = [
    "CpuPhase",
    "IdleCpu",
    "cpu_seconds",
    "main",
    "measure_idle",
    "measure_idle_cpu",
    "measure_rate",
    "measure_saturation",
    "parse_cpu_seconds",
]

IMAGE = SAMPLE_IMAGES / "cat.jpg"
RATES = (2.0, 10.0)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_cpu_seconds(stat: str) -> float:
    """User + system CPU seconds in the text of a /proc/<pid>/stat file: a process's counts cover
    all of its threads, the ones that have ended included."""
    # Field 2, the command name, is in parentheses and may itself hold spaces and parentheses.
    fields = stat[stat.rindex(")") + 1 :].split()
    # fields[0] is field 3 (the state); utime and stime are fields 14 and 15, in clock ticks.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """The CPU time process ``pid`` has used so far (Linux), to the clock tick (usually 10 ms)."""
    return parse_cpu_seconds(Path(f"/proc/{pid}/stat").read_text())


@dataclass(frozen=True)
class CpuPhase:
    """One load held for ``seconds``, and the server CPU time it cost."""

    load: str
    requests: int
    errors: int
    seconds: float
    cpu_seconds: float
    p50_ms: float

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_seconds * 1000 / self.requests if self.requests else float("nan")

    @property
    def cpu_ms_per_second(self) -> float:
        return self.cpu_seconds * 1000 / self.seconds if self.seconds else float("nan")


@dataclass(frozen=True)
class IdleCpu:
    """CPU per request at a few fixed rates, against saturation's."""

    idle: CpuPhase
    paced: tuple[CpuPhase, ...]
    saturation: CpuPhase

    def ratio(self, phase: CpuPhase) -> float:
        """``phase``'s CPU per request over saturation's."""
        return phase.cpu_ms_per_request / self.saturation.cpu_ms_per_request

    @property
    def worst_ratio(self) -> float:
        return max(self.ratio(phase) for phase in self.paced)

    def lines(self) -> list[str]:
        rows = [
            f"{phase.load:>6}: {phase.cpu_ms_per_request:6.1f} ms CPU/request "
            f"({self.ratio(phase):4.2f} x saturation), {phase.requests} requests, "
            f"{phase.errors} errors, p50 {phase.p50_ms:.1f} ms"
            for phase in (*self.paced, self.saturation)
        ]
        rows.append(f"  idle: {self.idle.cpu_ms_per_second:6.1f} ms CPU/s with no requests")
        return rows


def _phase(load: str, result: LoadResult, cpu: float) -> CpuPhase:
    return CpuPhase(load, result.requests, result.errors, result.seconds, cpu,
                    result.percentile_ms(50))  # fmt: skip


async def _paced(
    address: str, pid: int, image: bytes, rate: float, seconds: float, warm_up: float
) -> CpuPhase:
    async with grpc.aio.insecure_channel(address) as channel:
        send = sender("tutorial", channel, [image])
        # Already at the rate when measuring starts: the warm-up ends one interval after its
        # last request, when the measured run sends its first.
        await open_loop(send, rate, duration=warm_up)
        before = cpu_seconds(pid)
        result = await open_loop(send, rate, duration=seconds)
        return _phase(f"{rate:g}/s", result, cpu_seconds(pid) - before)


async def _saturated(
    address: str, pid: int, image: bytes, concurrency: int, seconds: float, warm_up: float
) -> CpuPhase:
    async with grpc.aio.insecure_channel(address) as channel:
        send = sender("tutorial", channel, [image])
        await closed_loop(send, concurrency, duration=warm_up)
        before = cpu_seconds(pid)
        result = await closed_loop(send, concurrency, duration=seconds)
        return _phase(f"c{concurrency}", result, cpu_seconds(pid) - before)


def measure_rate(
    address: str,
    pid: int,
    image: bytes,
    rate: float,
    *,
    seconds: float = 15.0,
    warm_up: float = 1.0,
) -> CpuPhase:
    """``rate`` single-image requests a second (open loop) for ``seconds``, after ``warm_up``
    seconds at the same rate, and the CPU time server process ``pid`` spent meanwhile."""
    return asyncio.run(_paced(address, pid, image, rate, seconds, warm_up))


def measure_saturation(
    address: str,
    pid: int,
    image: bytes,
    *,
    concurrency: int = 32,
    seconds: float = 10.0,
    warm_up: float = WARM_UP_SECONDS,
) -> CpuPhase:
    """``concurrency`` clients each sending single-image requests back to back, and the CPU time
    server process ``pid`` spent meanwhile."""
    return asyncio.run(_saturated(address, pid, image, concurrency, seconds, warm_up))


def measure_idle(pid: int, seconds: float = 5.0) -> CpuPhase:
    """The CPU time process ``pid`` spends in ``seconds`` with no requests."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return CpuPhase("idle", 0, 0, seconds, cpu_seconds(pid) - before, float("nan"))


def measure_idle_cpu(
    address: str,
    pid: int,
    image: bytes,
    *,
    rates: tuple[float, ...] = RATES,
    seconds: float = 15.0,
    concurrency: int = 32,
    saturation_seconds: float = 10.0,
    idle_seconds: float = 5.0,
) -> IdleCpu:
    """Saturation first (it also warms the server up), then no requests, then each rate."""
    saturation = measure_saturation(address, pid, image, concurrency=concurrency,
                                    seconds=saturation_seconds)  # fmt: skip
    idle = measure_idle(pid, idle_seconds)
    paced = tuple(measure_rate(address, pid, image, rate, seconds=seconds) for rate in rates)
    return IdleCpu(idle, paced, saturation)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idle_cpu", description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS)
    parser.add_argument("--rates", default=",".join(f"{rate:g}" for rate in RATES),
                        help="requests a second, comma-separated")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each rate's run")
    parser.add_argument("--concurrency", type=int, default=32, help="clients at saturation")
    args = parser.parse_args(argv)
    arguments = ["--model", args.model, "--artifacts", str(args.artifacts.resolve())]
    with ServerProcess(arguments) as server:
        figures = measure_idle_cpu(
            server.address, server.pid, IMAGE.read_bytes(),
            rates=tuple(float(rate) for rate in args.rates.split(",")),
            seconds=args.seconds, concurrency=args.concurrency,
        )  # fmt: skip
    print("\n".join(figures.lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
