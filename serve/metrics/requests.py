"""Inference requests, counted by API, model, version and gRPC status, with their latency.

The wire adapters report each request as it begins and ends (``serve.services.metering``). Both
happen on the event loop, as does the scrape (``serve.metrics.listener``), so plain integers do:
no lock, and once a series exists, a request costs a table lookup, two dict lookups and a few
additions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from serve.errors import TorchgrpcError
from serve.metrics.families import PREFIX, add_time_histogram
from serve.model_table import ModelTable
from serve.statistics import TimeHistogram

__all__ = ["APIS", "RequestMeter", "model_labels"]

APIS = ("tutorial", "classifier", "kserve")
# What a request names ("" = the default model, the newest version) -> the labels it counts under.
Resolve = Callable[[str, str], tuple[str, str]]


class _Series:
    """One API's requests to one model version."""

    __slots__ = ("codes", "latency")

    def __init__(self) -> None:
        # gRPC status name -> requests that ended with it.
        self.codes: dict[str, int] = {}
        self.latency = TimeHistogram()


class RequestMeter(Collector):
    def __init__(self, resolve: Resolve) -> None:
        self._resolve = resolve
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._in_flight = dict.fromkeys(APIS, 0)

    def begin(self, api: str) -> None:
        self._in_flight[api] += 1

    def end(self, api: str, model: str, version: str, code: str, elapsed_ns: int) -> None:
        """A request of ``api`` that named ``model`` and ``version`` ended with status ``code``."""
        self._in_flight[api] -= 1
        model, version = self._resolve(model, version)
        key = (api, model, version)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        series.codes[code] = series.codes.get(code, 0) + 1
        series.latency.add(elapsed_ns)

    def collect(self) -> Iterator[Metric]:
        labels = ["api", "model", "version"]
        requests = CounterMetricFamily(
            PREFIX + "requests",
            "Inference requests answered (each stream item is one), by gRPC status code",
            labels=[*labels, "code"],
        )
        latency = HistogramMetricFamily(
            PREFIX + "request_duration_seconds",
            "Time from a request's arrival to its answer, in the server",
            labels=labels,
        )
        for key, series in self._series.items():
            for code, count in series.codes.items():
                requests.add_metric([*key, code], count)
            add_time_histogram(latency, key, series.latency)
        in_flight = GaugeMetricFamily(
            PREFIX + "requests_in_flight",
            "Inference requests begun and not yet answered",
            labels=["api"],
        )
        for api, count in self._in_flight.items():
            in_flight.add_metric([api], count)
        yield from (requests, latency, in_flight)


def model_labels(table: ModelTable) -> Resolve:
    """The model and version a request counts under: the version that serves it, or the model's
    name alone (when it isn't served now, or the version named isn't), or neither, for a model
    the server doesn't know (so a client's made-up names can't add series)."""

    def resolve(name: str, version: str) -> tuple[str, str]:
        try:
            served = table.model(name, version)
        except TorchgrpcError:
            name = name or table.default_model
            return (name, "") if table.knows(name) else ("", "")
        return served.name, served.version

    return resolve
