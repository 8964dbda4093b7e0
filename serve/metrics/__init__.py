"""Prometheus metrics: one registry per server, and the HTTP listener that serves it.

The registry holds three collectors: the request meter the wire adapters feed
(``serve.metrics.requests``), the models' figures read at scrape time (``serve.metrics.models``)
and prometheus_client's process collector. It is read on the server's event loop, by the
listener (``serve.metrics.listener``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from serve.metrics.listener import MetricsListener
from serve.metrics.models import ModelCollector
from serve.metrics.requests import APIS, RequestMeter, model_labels
from serve.model_table import ModelTable

__all__ = ["APIS", "RequestMeter", "ServerMetrics"]


class ServerMetrics:
    def __init__(self, table: ModelTable, is_ready: Callable[[], bool]) -> None:
        self.registry = CollectorRegistry()
        self.requests = RequestMeter(model_labels(table))
        self.registry.register(self.requests)
        self.registry.register(ModelCollector(table))
        ProcessCollector(registry=self.registry)
        self._listener = MetricsListener(self.registry, is_ready)

    @property
    def port(self) -> int:
        return self._listener.port

    @property
    def addresses(self) -> list[str]:
        return self._listener.addresses

    async def listen(self, hosts: Sequence[str], port: int) -> None:
        await self._listener.start(hosts, port)

    async def close(self) -> None:
        await self._listener.close()
