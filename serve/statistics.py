"""Per-model inference statistics, with Triton's meanings (what perf_analyzer reads).

Per request: success and fail (count and total duration), and for successful requests the time
queued and the time of the batch's three stages, each request being charged its batch's stage
times. Per batch size: executions and the stage times of each execution. Durations in ns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["BatchTimes", "Duration", "InferenceStatistics", "StageTimes"]


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns


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
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    # Rows inferred (each row of a batched request counts) and model executions (batches).
    inference_count: int = 0
    execution_count: int = 0
    # Wall-clock time of the last successful request, in ms since the epoch; 0 = none yet.
    last_inference_ms: int = 0
    batches: dict[int, BatchTimes] = field(default_factory=dict)

    def record_batch(self, size: int, times: StageTimes) -> None:
        self.execution_count += 1
        self.batches.setdefault(size, BatchTimes()).add(times)

    def record_success(self, rows: int, total_ns: int, queue_ns: int, times: StageTimes) -> None:
        self.success.add(total_ns)
        self.queue.add(queue_ns)
        self.compute_input.add(times.input_ns)
        self.compute_infer.add(times.infer_ns)
        self.compute_output.add(times.output_ns)
        self.inference_count += rows
        self.last_inference_ms = time.time_ns() // 1_000_000

    def record_failure(self, total_ns: int) -> None:
        self.fail.add(total_ns)
