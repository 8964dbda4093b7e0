"""Prometheus metrics and KServe's HTTP health paths, scraped from a real server after real traffic
over the three APIs, unary and streamed, with failures among them."""

from __future__ import annotations

import argparse
import http.client
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from benchmarks import bench
from serve.config import FREE_PORT, ServerConfig, add_arguments, load_config
from serve.pb import inference_pb2, inference_pb2_grpc
from serve.pb.kserve import grpc_service_pb2 as kserve
from serve.pb.kserve import grpc_service_pb2_grpc as kserve_grpc
from serve.pb.torchgrpc.v1 import classifier_pb2 as pb
from serve.pb.torchgrpc.v1 import classifier_pb2_grpc as pb_grpc
from serve.statistics import TimeHistogram
from tests.conftest import CAT_JPG, COFFEE_JPG, ServerThread, config_with

CAT, COFFEE = CAT_JPG.read_bytes(), COFFEE_JPG.read_bytes()
NOT_AN_IMAGE = b"this is not an image"
LITE0, RESNET = "efficientnet_lite0", "resnet34"
OK, INVALID, NOT_FOUND = "OK", "INVALID_ARGUMENT", "NOT_FOUND"


@dataclass(frozen=True)
class Scrape:
    samples: list[Sample]
    version: str = ""  # the version both models serve
    # Triton's statistics of each model (ModelStatistics), read right after the scrape.
    statistics: dict[str, kserve.ModelStatistics] = field(default_factory=dict)

    def matching(self, name: str, **labels: str) -> list[Sample]:
        """The samples called ``name`` whose labels include ``labels``."""
        return [s for s in self.samples if s.name == name and labels.items() <= s.labels.items()]

    def value(self, name: str, **labels: str) -> float:
        """The value of the one sample called ``name`` whose labels are exactly ``labels``."""
        (sample,) = [s for s in self.samples if s.name == name and s.labels == labels]
        return sample.value


def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def scrape_of(port: int) -> Scrape:
    status, body = get(port, "/metrics")
    assert status == 200
    families = text_string_to_metric_families(body.decode())
    return Scrape([sample for family in families for sample in family.samples])


def kserve_request(image: bytes, model: str = LITE0) -> kserve.ModelInferRequest:
    """One encoded image, as the load generator (and tritonclient) sends it."""
    return bench.kserve_request("kserve", [image], model)


@pytest.fixture(scope="module")
def metrics_server(base_config: ServerConfig) -> Iterator[ServerThread]:
    """Both models, the metrics listener on a free port, and no traffic but this module's."""
    with ServerThread(config_with(base_config, metrics_port=FREE_PORT)) as running:
        yield running


# What the traffic below sends: (api, model, code) -> requests, and the rows each model runs.
EXPECTED_REQUESTS = {
    ("tutorial", LITE0, OK): 3,
    ("tutorial", LITE0, INVALID): 1,
    ("classifier", LITE0, OK): 2 + 2,
    ("classifier", RESNET, OK): 1,
    ("classifier", LITE0, INVALID): 1 + 1,
    ("classifier", "", NOT_FOUND): 1,
    ("kserve", LITE0, OK): 2 + 2,
    ("kserve", LITE0, INVALID): 1,
    ("kserve", "", NOT_FOUND): 1,
}
EXPECTED_ROWS = {LITE0: 4 + 4 + 4, RESNET: 1}


def send_traffic(channel: grpc.Channel) -> None:
    tutorial = inference_pb2_grpc.InferenceServerStub(channel)
    for images in ([CAT], [COFFEE], [CAT, COFFEE]):
        tutorial.inference(inference_pb2.InferenceRequest(image=images), timeout=30)
    with pytest.raises(grpc.RpcError) as failure:
        tutorial.inference(inference_pb2.InferenceRequest(image=[NOT_AN_IMAGE]), timeout=30)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    classifier = pb_grpc.ClassifierStub(channel)
    classifier.Classify(pb.ClassifyRequest(images=[CAT]), timeout=30)
    classifier.Classify(pb.ClassifyRequest(images=[COFFEE], model=LITE0), timeout=30)
    classifier.Classify(pb.ClassifyRequest(images=[CAT], model=RESNET), timeout=30)
    with pytest.raises(grpc.RpcError) as failure:
        classifier.Classify(pb.ClassifyRequest(images=[NOT_AN_IMAGE]), timeout=30)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    items = [
        pb.ClassifyStreamRequest(id="cat", image=CAT),
        pb.ClassifyStreamRequest(id="bad", image=NOT_AN_IMAGE),
        pb.ClassifyStreamRequest(id="coffee", image=COFFEE, model=LITE0),
        pb.ClassifyStreamRequest(id="nope", image=CAT, model="no-such-model"),
    ]
    answers = {a.id: a for a in classifier.ClassifyStream(iter(items), timeout=30)}
    assert {i: a.WhichOneof("outcome") for i, a in answers.items()} == {
        "cat": "classification", "coffee": "classification", "bad": "error", "nope": "error",
    }  # fmt: skip

    inference = kserve_grpc.GRPCInferenceServiceStub(channel)
    inference.ServerLive(kserve.ServerLiveRequest(), timeout=30)  # not an inference request
    for image in (CAT, COFFEE):
        inference.ModelInfer(kserve_request(image), timeout=30)
    with pytest.raises(grpc.RpcError) as failure:
        inference.ModelInfer(kserve_request(CAT, model="no-such-model"), timeout=30)
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    stream = [kserve_request(CAT), kserve_request(NOT_AN_IMAGE), kserve_request(COFFEE)]
    errors = [r.error_message for r in inference.ModelStreamInfer(iter(stream), timeout=30)]
    assert [bool(e) for e in errors] == [False, True, False]


@pytest.fixture(scope="module")
def scrape(metrics_server: ServerThread) -> Scrape:
    with grpc.insecure_channel(metrics_server.address) as channel:
        send_traffic(channel)
        scraped = scrape_of(metrics_server.server.metrics_port)
        inference = kserve_grpc.GRPCInferenceServiceStub(channel)
        statistics = {
            model: inference.ModelStatistics(
                kserve.ModelStatisticsRequest(name=model), timeout=30
            ).model_stats[0]
            for model in (LITE0, RESNET)
        }
    (version,) = {s.version for s in statistics.values()}
    return Scrape(scraped.samples, version, statistics)


def test_requests_add_up_to_what_was_sent_by_api_model_and_status(scrape: Scrape) -> None:
    samples = scrape.matching("torchgrpc_requests_total")
    counted = {(s.labels["api"], s.labels["model"], s.labels["code"]): s.value for s in samples}
    assert counted == EXPECTED_REQUESTS
    versions = {s.labels["model"]: s.labels["version"] for s in samples}
    assert versions == {LITE0: scrape.version, RESNET: scrape.version, "": ""}


def test_latency_histograms_count_every_request(scrape: Scrape) -> None:
    expected: Counter[tuple[str, str]] = Counter()
    for (api, model, _), count in EXPECTED_REQUESTS.items():
        expected[api, model] += count
    samples = scrape.matching("torchgrpc_request_duration_seconds_count")
    assert {(s.labels["api"], s.labels["model"]): s.value for s in samples} == expected
    for (api, model), count in expected.items():
        labels = {"api": api, "model": model, "version": scrape.version if model else ""}
        buckets = scrape.matching("torchgrpc_request_duration_seconds_bucket", **labels)
        assert (buckets[-1].labels["le"], buckets[-1].value) == ("+Inf", count)
        assert scrape.value("torchgrpc_request_duration_seconds_sum", **labels) > 0


@pytest.mark.parametrize(("stage", "statistic"), [("queue", "queue"), ("compute", "compute_infer")])
def test_stage_histograms_agree_with_the_kserve_statistics(
    scrape: Scrape, stage: str, statistic: str
) -> None:
    """Triton's statistics (ModelStatistics) of the same requests: the same counts and sums."""
    for model in (LITE0, RESNET):
        labels = {"model": model, "version": scrape.version}
        duration = getattr(scrape.statistics[model].inference_stats, statistic)
        assert scrape.value(f"torchgrpc_{stage}_duration_seconds_count", **labels) == (
            duration.count
        )
        assert scrape.value(f"torchgrpc_{stage}_duration_seconds_sum", **labels) == (
            pytest.approx(duration.ns / 1e9, abs=1e-9)
        )


@pytest.mark.parametrize("stage", ["queue", "decode", "compute"])
def test_stage_histograms_count_the_requests_that_ran(scrape: Scrape, stage: str) -> None:
    succeeded: Counter[str] = Counter()
    for (_, model, code), count in EXPECTED_REQUESTS.items():
        if code == OK:
            succeeded[model] += count
    for model, count in succeeded.items():
        labels = {"model": model, "version": scrape.version}
        assert scrape.value(f"torchgrpc_{stage}_duration_seconds_count", **labels) == count
        buckets = [
            s.value for s in scrape.matching(f"torchgrpc_{stage}_duration_seconds_bucket", **labels)
        ]
        assert buckets == sorted(buckets) and buckets[-1] == count
    labels = {"model": LITE0, "version": scrape.version}
    assert scrape.value(f"torchgrpc_{stage}_duration_seconds_sum", **labels) > 0


def test_the_batch_size_histogram_adds_up_to_the_rows_run(scrape: Scrape) -> None:
    for model, rows in EXPECTED_ROWS.items():
        labels = {"model": model, "version": scrape.version}
        statistics = scrape.statistics[model]
        assert scrape.value("torchgrpc_batch_size_sum", **labels) == rows
        assert statistics.inference_count == rows
        batches = scrape.value("torchgrpc_batch_size_count", **labels)
        assert batches == statistics.execution_count
        assert scrape.value("torchgrpc_batch_size_bucket", **labels, le="1.0") == sum(
            b.compute_infer.count for b in statistics.batch_stats if b.batch_size == 1
        )


def test_gauges_are_back_to_zero_and_models_are_ready(scrape: Scrape) -> None:
    for api in ("tutorial", "classifier", "kserve"):
        assert scrape.value("torchgrpc_requests_in_flight", api=api) == 0
    for model in (LITE0, RESNET):
        labels = {"model": model, "version": scrape.version}
        assert scrape.value("torchgrpc_queue_rows", **labels) == 0
        states = {
            s.labels["state"]: s.value for s in scrape.matching("torchgrpc_model_state", **labels)
        }
        assert states == {"READY": 1, "LOADING": 0, "UNLOADING": 0, "UNAVAILABLE": 0}


def test_process_metrics_are_exported(scrape: Scrape) -> None:
    assert scrape.value("process_resident_memory_bytes") > 0
    assert scrape.value("process_open_fds") > 0


def test_openmetrics_is_served_when_asked_for(metrics_server: ServerThread) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", metrics_server.server.metrics_port)
    connection.request("GET", "/metrics", headers={"Accept": "application/openmetrics-text"})
    response = connection.getresponse()
    body = response.read().decode()
    connection.close()
    assert response.status == 200
    assert response.getheader("Content-Type", "").startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")


def test_health_paths_and_others(metrics_server: ServerThread) -> None:
    port = metrics_server.server.metrics_port
    assert get(port, "/v2/health/live") == (200, b"")
    assert get(port, "/v2/health/ready") == (200, b"")
    assert get(port, "/v2/health/ready", method="HEAD") == (200, b"")
    assert get(port, "/nothing/here")[0] == 404
    assert get(port, "/metrics", method="POST")[0] == 405


def test_the_listener_follows_the_host_rule(metrics_server: ServerThread) -> None:
    port = metrics_server.server.metrics_port
    assert metrics_server.server.metrics_addresses[0] == f"127.0.0.1:{port}"
    assert all(
        address in ("127.0.0.1", "[::1]")
        for address in (a.rsplit(":", 1)[0] for a in metrics_server.server.metrics_addresses)
    )


def test_ready_turns_503_on_shutdown_while_live_stays_200(base_config: ServerConfig) -> None:
    """During the grace period (held open here by a stream), probes see the server not ready."""
    config = config_with(base_config, models=(LITE0,), metrics_port=FREE_PORT, grace_seconds=60.0)
    release = threading.Event()

    def items() -> Iterator[pb.ClassifyStreamRequest]:
        yield pb.ClassifyStreamRequest(id="held", image=CAT)
        release.wait(timeout=60)

    with ServerThread(config) as running, grpc.insecure_channel(running.address) as channel:
        port = running.server.metrics_port
        assert get(port, "/v2/health/ready")[0] == 200
        stream = pb_grpc.ClassifierStub(channel).ClassifyStream(items(), timeout=60)
        assert next(stream).id == "held"
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stopping = threading.Thread(target=running.stop)
        stopping.start()
        # NOT_SERVING is announced after readiness is withdrawn.
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        assert get(port, "/v2/health/ready") == (503, b"not ready\n")
        assert get(port, "/v2/health/live") == (200, b"")
        release.set()
        assert list(stream) == []
        stopping.join(timeout=60)
        assert not stopping.is_alive()
        with pytest.raises(ConnectionRefusedError):
            get(port, "/v2/health/live")


def test_a_metrics_port_in_use_stops_start_up_and_says_so(
    base_config: ServerConfig, metrics_server: ServerThread
) -> None:
    taken = metrics_server.server.metrics_port
    refused = rf"can't listen on 127\.0\.0\.1:{taken} for metrics: .*--metrics-port"
    with (
        pytest.raises(OSError, match=refused),
        ServerThread(config_with(base_config, metrics_port=taken)),
    ):
        pass


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"metrics_port": -2}, "metrics_port -2 is out of range"),
        ({"metrics_port": 65536}, "metrics_port 65536 is out of range"),
        ({"metrics_port": 65535, "workers": 2}, "metrics_port 65535 is out of range"),
        ({"port": 9000, "metrics_port": 9000}, "port and metrics_port are both 9000"),
    ],
)
def test_bad_metrics_ports_are_refused(changes: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerConfig(**changes)


def test_the_cli_takes_the_metrics_port() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert load_config(parser.parse_args([])).config.metrics_port == 8002
    assert load_config(parser.parse_args(["--metrics-port", "0"])).config.metrics_port == 0
    assert load_config(parser.parse_args(["--metrics-port", "-1"])).config.metrics_port == FREE_PORT


def test_a_duration_on_a_bucket_bound_counts_in_that_bucket() -> None:
    histogram = TimeHistogram()
    for seconds in (0.0, 0.0001, 0.00010001, 10.0, 11.0):
        histogram.add(round(seconds * 1e9))
    assert histogram.buckets[:3] == [2, 1, 0] and histogram.buckets[-2:] == [1, 1]
    assert (histogram.count, sum(histogram.buckets)) == (5, 5)


def test_a_request_past_its_deadline_is_counted_deadline_exceeded(
    base_config: ServerConfig,
) -> None:
    """Its batch waits for more rows (max_queue_delay_ms) longer than the client's deadline:
    gRPC cancels the handler when the deadline passes."""
    config = config_with(
        base_config, models=(LITE0,), metrics_port=FREE_PORT, max_queue_delay_ms=3000.0
    )
    with ServerThread(config) as running, grpc.insecure_channel(running.address) as channel:
        tutorial = inference_pb2_grpc.InferenceServerStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            tutorial.inference(inference_pb2.InferenceRequest(image=[CAT, COFFEE]), timeout=0.5)
        assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        port = running.server.metrics_port
        # The server's handler is cancelled at about the time the client gives up: until then
        # the request is still in flight.
        deadline = time.monotonic() + 30
        while (scraped := scrape_of(port)).value("torchgrpc_requests_in_flight", api="tutorial"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        counted = [
            (s.labels["code"], s.value) for s in scraped.matching("torchgrpc_requests_total")
        ]
        assert counted == [("DEADLINE_EXCEEDED", 1)]
