"""Building blocks of the exported metrics: label names and the histogram conversions."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from prometheus_client.core import HistogramMetricFamily

from serve.statistics import LATENCY_BUCKETS, TimeHistogram

__all__ = ["BATCH_SIZE_BUCKETS", "PREFIX", "add_batch_sizes", "add_time_histogram"]

PREFIX = "torchgrpc_"
# Upper bounds of the batch size histogram's buckets, in rows.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def add_time_histogram(
    family: HistogramMetricFamily, labels: Sequence[str], histogram: TimeHistogram
) -> None:
    """Adds ``histogram`` (durations in ns) to ``family``, in seconds."""
    buckets = _cumulative(LATENCY_BUCKETS, list(histogram.buckets))
    family.add_metric(labels, buckets, histogram.ns / 1e9)


def add_batch_sizes(
    family: HistogramMetricFamily, labels: Sequence[str], batches: Mapping[int, int]
) -> None:
    """Adds a histogram of batch sizes to ``family`` from ``batches`` (size -> batches run)."""
    counts = [0] * (len(BATCH_SIZE_BUCKETS) + 1)
    rows = 0
    for size, number in batches.items():
        counts[_bucket(size)] += number
        rows += size * number
    family.add_metric(labels, _cumulative(BATCH_SIZE_BUCKETS, counts), rows)


def _bucket(size: int) -> int:
    for index, bound in enumerate(BATCH_SIZE_BUCKETS):
        if size <= bound:
            return index
    return len(BATCH_SIZE_BUCKETS)


def _cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Prometheus's buckets (each counts everything at most its bound) from per-bucket counts,
    the last of which counts what is over every bound."""
    total = 0
    buckets = []
    for bound, count in zip((*bounds, math.inf), counts, strict=True):
        total += count
        buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), float(total)))
    return buckets
