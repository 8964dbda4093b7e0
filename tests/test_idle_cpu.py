"""benchmarks.idle_cpu's arithmetic and the open-loop sender, against a real server on loopback."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from benchmarks.idle_cpu import (
    CLOCK_TICKS,
    CpuPhase,
    IdleCpu,
    cpu_seconds,
    measure_rate,
    measure_saturation,
    parse_cpu_seconds,
)
from benchmarks.loadgen import open_loop
from serve.pb import inference_pb2, inference_pb2_grpc

# A /proc/<pid>/stat line whose command name holds a space and a parenthesis; utime 250, stime 50.
STAT = (
    "4242 (python -m (x)) S 1 4242 4242 0 -1 4194560 9000 0 12 0 250 50 0 0 20 0 9 0 "
    "1000 300000000 20000 18446744073709551615 1 1 0 0 0 0 0 16781312 2 0 0 0 17 1 0 0 0 0 0"
)


class CountingServer(inference_pb2_grpc.InferenceServerServicer):  # type: ignore[misc]
    """The tutorial API on loopback, answering class 285 and noting when each request came."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self._lock = threading.Lock()

    def inference(
        self, request: inference_pb2.InferenceRequest, context: grpc.ServicerContext
    ) -> inference_pb2.InferenceReply:
        with self._lock:
            self.arrivals.append(time.perf_counter())
        return inference_pb2.InferenceReply(pred=[285] * len(request.image))


@pytest.fixture
def counting_server() -> Iterator[tuple[str, CountingServer]]:
    servicer = CountingServer()
    server = grpc.server(ThreadPoolExecutor(4))
    inference_pb2_grpc.add_InferenceServerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None).wait()


def test_stat_parsing_adds_user_and_system_ticks() -> None:
    assert parse_cpu_seconds(STAT) == 300 / CLOCK_TICKS


def test_cpu_time_of_this_process_grows_with_busy_work() -> None:
    before = cpu_seconds(os.getpid())
    started = time.process_time()
    while time.process_time() - started < 0.1:
        pass
    assert cpu_seconds(os.getpid()) > before


def test_phase_and_ratio_arithmetic() -> None:
    idle = CpuPhase("idle", 0, 0, 5.0, 0.02, float("nan"))
    paced = CpuPhase("10/s", 100, 0, 10.0, 3.0, 12.0)
    saturation = CpuPhase("c32", 1000, 0, 10.0, 15.0, 250.0)
    figures = IdleCpu(idle, (paced,), saturation)
    assert (paced.cpu_ms_per_request, saturation.cpu_ms_per_request) == (30.0, 15.0)
    assert (figures.ratio(paced), figures.worst_ratio, idle.cpu_ms_per_second) == (2.0, 2.0, 4.0)
    assert figures.lines()[0] == (
        "  10/s:   30.0 ms CPU/request (2.00 x saturation), 100 requests, 0 errors, p50 12.0 ms"
    )


async def test_open_loop_sends_on_schedule_without_waiting_for_answers() -> None:
    departures: list[float] = []

    async def slow_send() -> int:
        departures.append(time.perf_counter())
        await asyncio.sleep(0.25)
        return 1

    started = time.perf_counter()
    result = await open_loop(slow_send, 20.0, duration=0.5)
    assert (result.requests, result.images, result.errors) == (10, 10, 0)
    # No request leaves before its time, and none waits for an earlier answer: they overlap.
    assert all(at >= started + i / 20.0 - 0.001 for i, at in enumerate(departures))
    assert result.concurrency > 1
    assert result.seconds >= 0.45 + 0.25


def test_measure_rate_sends_the_rate_to_a_real_server(
    counting_server: tuple[str, CountingServer],
) -> None:
    address, servicer = counting_server
    phase = measure_rate(address, os.getpid(), b"jpeg", 20.0, seconds=0.5, warm_up=0.25)
    assert (phase.load, phase.requests, phase.errors) == ("20/s", 10, 0)
    assert len(servicer.arrivals) == 5 + 10
    assert phase.seconds >= 0.5 and phase.cpu_seconds >= 0


def test_measure_saturation_keeps_every_client_busy(
    counting_server: tuple[str, CountingServer],
) -> None:
    address, servicer = counting_server
    phase = measure_saturation(
        address, os.getpid(), b"jpeg", concurrency=4, seconds=0.3, warm_up=0.1
    )
    assert (phase.load, phase.errors) == ("c4", 0)
    # Every answer counted came from the server (the warm-up's came too).
    assert 0 < phase.requests <= len(servicer.arrivals)
