"""Stopping a real server process with signals: the first drains within the grace period (every
request in flight answered, open streams served until their clients end them), a second one
during it stops the server at once."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np

from benchmarks.process import ServerProcess
from serve.pb import inference_pb2, inference_pb2_grpc
from serve.pb.kserve import grpc_service_pb2_grpc as kserve_grpc
from serve.pb.torchgrpc.v1 import classifier_pb2 as pb
from serve.pb.torchgrpc.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import CAT_JPG, EGYPTIAN_CAT, TEST_ARTIFACTS
from tests.test_metrics import kserve_request, scrape_of


def test_a_second_signal_cuts_the_grace_period_short(lite0_export: object) -> None:
    arguments = ["--model-repository", str(TEST_ARTIFACTS), "--model", "efficientnet_lite0",
                 "--grace-seconds", "60"]  # fmt: skip
    with ServerProcess(arguments) as server, grpc.insecure_channel(server.address) as channel:
        # A stream its client keeps open: the graceful stop waits for it, up to the grace period.
        item = pb.ClassifyStreamRequest(id="1", image=CAT_JPG.read_bytes())
        sent = threading.Event()

        def items() -> object:
            yield item
            sent.wait(120)  # held open until the test ends

        stream = pb_grpc.ClassifierStub(channel).ClassifyStream(items(), timeout=120)
        try:
            assert next(stream).id == "1"
            os.kill(server.pid, signal.SIGTERM)
            time.sleep(2)
            assert server.running(), "the first signal drains: the open stream holds it"
            started = time.monotonic()
            os.kill(server.pid, signal.SIGTERM)
            assert server.wait(timeout=30) == 0
            assert time.monotonic() - started < 15  # far inside the 60 s grace period
        finally:
            sent.set()


def in_flight(metrics_port: int) -> tuple[float, float]:
    """The server's inference requests in flight, and answered, from its metrics."""
    scrape = scrape_of(metrics_port)
    return (
        sum(s.value for s in scrape.matching("torchgrpc_requests_in_flight")),
        sum(s.value for s in scrape.matching("torchgrpc_requests_total")),
    )


def test_sigterm_answers_every_request_in_flight_and_the_open_stream_then_exits_0(
    lite0_export: object,
) -> None:
    # One instance, one image per batch: the 64 requests take a while to drain.
    arguments = ["--model-repository", str(TEST_ARTIFACTS), "--model", "efficientnet_lite0",
                 "--grace-seconds", "60", "--instances", "1", "--max-batch-size", "1"]  # fmt: skip
    with ServerProcess(arguments) as server, grpc.insecure_channel(server.address) as channel:
        cat = CAT_JPG.read_bytes()
        more_items = threading.Event()

        def items() -> Iterator[pb.ClassifyStreamRequest]:
            yield pb.ClassifyStreamRequest(id="before", image=cat, top_k=1)
            more_items.wait(60)
            yield pb.ClassifyStreamRequest(id="after", image=cat, top_k=1)

        stream = pb_grpc.ClassifierStub(channel).ClassifyStream(items(), timeout=120)
        try:
            assert next(stream).classification.labels[0].class_id == EGYPTIAN_CAT
            tutorial = inference_pb2_grpc.InferenceServerStub(channel)
            classifier = pb_grpc.ClassifierStub(channel)
            kserve = kserve_grpc.GRPCInferenceServiceStub(channel)
            calls: list[tuple[str, grpc.Future]] = []
            for number in range(64):
                if number % 3 == 0:
                    request = inference_pb2.InferenceRequest(image=[cat])
                    calls.append(("tutorial", tutorial.inference.future(request, timeout=120)))
                elif number % 3 == 1:
                    request = pb.ClassifyRequest(images=[cat], top_k=1)
                    calls.append(("classifier", classifier.Classify.future(request, timeout=120)))
                else:
                    request = kserve_request(cat)
                    calls.append(("kserve", kserve.ModelInfer.future(request, timeout=120)))
            # Every request has reached the server (the stream's first item included) before
            # the signal.
            deadline = time.monotonic() + 60
            while sum(in_flight(server.metrics_port)) < 65 and time.monotonic() < deadline:
                time.sleep(0.01)
            running, answered = in_flight(server.metrics_port)
            assert running + answered == 65
            os.kill(server.pid, signal.SIGTERM)
            assert running > 8, "most of the 64 requests are still in flight at the signal"
            for api, call in calls:
                assert class_id(api, call.result(timeout=120)) == EGYPTIAN_CAT, api
            # The stream stays open through the grace period: its next item is answered too,
            # and it ends with OK once its client is done.
            more_items.set()
            answers = list(stream)
            assert [a.id for a in answers] == ["after"]
            assert answers[0].classification.labels[0].class_id == EGYPTIAN_CAT
            assert stream.code() == grpc.StatusCode.OK
            assert server.wait(timeout=60) == 0
            assert "Traceback" not in server.output()
        finally:
            more_items.set()


def class_id(api: str, reply: object) -> int:
    if api == "tutorial":
        return int(reply.pred[0])  # type: ignore[attr-defined]
    if api == "classifier":
        return int(reply.classifications[0].labels[0].class_id)  # type: ignore[attr-defined]
    scores = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32)  # type: ignore[attr-defined]
    return int(scores.argmax())
