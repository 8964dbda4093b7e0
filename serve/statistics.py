"""Per-model inference statistics, with Triton's meanings (what perf_analyzer reads).

Per request: success and fail (count and total duration), and for successful requests the time
queued and the time of the batch's three stages, each request being charged its batch's stage
times. Per batch size: executions and the stage times of each execution. Durations in ns.

Three of them also count their durations into buckets (``TimeHistogram``), which the Prometheus
metrics export as histograms: the time queued, the time decoding (making the request's inputs:
images decoded and pre-processed; nothing for tensors that arrive whole) and the model's time.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass, field

__all__ = [
    "LATENCY_BUCKETS",
    "BatchTimes",
    "Duration",
    "InferenceStatistics",
    "StageTimes",
    "TimeHistogram",
]

# Upper bounds of the latency histograms' buckets, in seconds: 100 µs to 10 s (the last bucket,
# +Inf, takes the rest).
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
_LATENCY_BOUNDS_NS = tuple(round(bound * 1e9) for bound in LATENCY_BUCKETS)


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns


@dataclass
class TimeHistogram(Duration):
    """A Duration that also counts each duration in the first bucket of ``LATENCY_BUCKETS`` it
    fits (at most its bound); ``buckets[-1]`` counts those over every bound."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns
        self.buckets[bisect_left(_LATENCY_BOUNDS_NS, ns)] += 1


@dataclass(frozen=True)
class StageTimes:
    """How long one batch spent in each stage: gathering its inputs, the model, its outputs."""

    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0

    def __add__(self, other: StageTimes) -> StageTimes:
        return StageTimes(
            self.input_ns + other.input_ns,
            self.infer_ns + other.infer_ns,
            self.output_ns + other.output_ns,
        )


@dataclass
class BatchTimes:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)

    def add(self, times: StageTimes) -> None:
        self.compute_input.add(times.input_ns)
        self.compute_infer.add(times.infer_ns)
        self.compute_output.add(times.output_ns)


@dataclass
class InferenceStatistics:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: TimeHistogram = field(default_factory=TimeHistogram)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: TimeHistogram = field(default_factory=TimeHistogram)
    compute_output: Duration = field(default_factory=Duration)
    # Not one of Triton's: making the request's inputs (decoding its images).
    decode: TimeHistogram = field(default_factory=TimeHistogram)
    # Rows inferred (each row of a batched request counts) and model executions (batches).
    inference_count: int = 0
    execution_count: int = 0
    # Wall-clock time of the last successful request, in ms since the epoch; 0 = none yet.
    last_inference_ms: int = 0
    batches: dict[int, BatchTimes] = field(default_factory=dict)

    def record_batch(self, size: int, times: StageTimes) -> None:
        self.execution_count += 1
        self.batches.setdefault(size, BatchTimes()).add(times)

    def record_success(
        self, rows: int, total_ns: int, queue_ns: int, decode_ns: int, times: StageTimes
    ) -> None:
        self.success.add(total_ns)
        self.queue.add(queue_ns)
        self.decode.add(decode_ns)
        self.compute_input.add(times.input_ns)
        self.compute_infer.add(times.infer_ns)
        self.compute_output.add(times.output_ns)
        self.inference_count += rows
        self.last_inference_ms = time.time_ns() // 1_000_000

    def record_failure(self, total_ns: int) -> None:
        self.fail.add(total_ns)
