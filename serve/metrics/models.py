"""The models' figures, read at scrape time from what the model layer already records: state,
queue depth, batch sizes, and the time requests spent queued, decoding and in the model."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from serve.metrics.families import PREFIX, add_batch_sizes, add_time_histogram
from serve.model_table import LOADING, READY, UNAVAILABLE, UNLOADING, ModelTable

__all__ = ["ModelCollector"]

STATES = (READY, LOADING, UNLOADING, UNAVAILABLE)


class ModelCollector(Collector):
    def __init__(self, table: ModelTable) -> None:
        self._table = table

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        state = GaugeMetricFamily(
            PREFIX + "model_state",
            "1 for the state each model (each version, when READY) is in, 0 for the others",
            labels=[*labels, "state"],
        )
        for statuses in self._table.statuses().values():
            for status in statuses:
                for name in STATES:
                    state.add_metric(
                        [status.name, status.version, name], float(name == status.state)
                    )
        queued = GaugeMetricFamily(
            PREFIX + "queue_rows",
            "Rows (images) admitted and not yet taken into a batch, those being decoded included",
            labels=labels,
        )
        batch_size = HistogramMetricFamily(
            PREFIX + "batch_size", "Rows in each batch the model ran", labels=labels
        )
        times = {
            stage: HistogramMetricFamily(PREFIX + f"{stage}_duration_seconds", text, labels=labels)
            for stage, text in (
                ("queue", "Time a request's rows waited in the queue, for requests that succeeded"),
                (
                    "decode",
                    "Time making a request's inputs (decoding and pre-processing its images; "
                    "none for tensors), for requests that succeeded",
                ),
                (
                    "compute",
                    "Time the model ran on the batch a request was in (Triton's compute_infer), "
                    "for requests that succeeded",
                ),
            )
        }
        for model in self._table.served():
            key = [model.name, model.version]
            batcher = model.batcher
            statistics = batcher.statistics
            queued.add_metric(key, batcher.queued)
            add_batch_sizes(batch_size, key, batcher.stats.batch_sizes)
            add_time_histogram(times["queue"], key, statistics.queue)
            add_time_histogram(times["decode"], key, statistics.decode)
            add_time_histogram(times["compute"], key, statistics.compute_infer)
        yield from (state, queued, batch_size, *times.values())
