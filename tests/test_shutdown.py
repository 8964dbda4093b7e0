"""Stopping a real server process with signals: the first drains within the grace period, a
second one during it stops the server at once."""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc

from benchmarks.process import ServerProcess
from serve.pb.torchgrpc.v1 import classifier_pb2 as pb
from serve.pb.torchgrpc.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import CAT_JPG, TEST_ARTIFACTS


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
