"""h2load drives a real server with pre-encoded gRPC frames, and counts what it can see."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from benchmarks import h2load
from benchmarks.process import ServerProcess
from export.pipeline import ExportResult
from serve.pb import inference_pb2
from tests.conftest import CAT_JPG, TEST_ARTIFACTS

pytestmark = pytest.mark.skipif(
    shutil.which("h2load") is None, reason=f"h2load is not installed: {h2load.INSTALL_HINT}"
)

REQUEST = inference_pb2.InferenceRequest(image=[CAT_JPG.read_bytes()]).SerializeToString()
TWO_CATS = inference_pb2.InferenceRequest(image=[CAT_JPG.read_bytes()] * 2).SerializeToString()


@pytest.fixture(scope="module")
def address(lite0_export: ExportResult) -> Iterator[str]:
    arguments = ["--model", "efficientnet_lite0", "--artifacts", str(TEST_ARTIFACTS)]
    with ServerProcess(arguments) as server:
        yield server.address


def test_grpc_frame_is_flag_length_message() -> None:
    assert h2load.grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert h2load.grpc_frame(b"") == b"\x00\x00\x00\x00\x00"
    assert h2load.grpc_frame(bytes(70_000))[:5] == b"\x00\x00\x01\x11\x70"


def test_h2load_counts_every_successful_call(address: str) -> None:
    result = h2load.measure(
        address, "/InferenceServer/inference", TWO_CATS, 4, requests=20, warm_up=0.2,
        images_per_request=2,
    )  # fmt: skip
    assert (result.succeeded, result.failed, result.errored) == (20, 0, 0)
    assert (result.status_2xx, result.non_2xx, result.grpc_statuses) == (20, 0, {})
    assert (result.requests, result.images, result.errors) == (20, 40, 0)
    assert result.summary()["requests"] == 20


def test_an_unknown_method_is_http_200_with_grpc_status_12_counted_as_errors(
    address: str,
) -> None:
    result = h2load.measure(address, "/InferenceServer/nope", REQUEST, 4, requests=20, warm_up=0)
    # h2load's own counts: all succeeded, HTTP 200, as a gRPC server answers any call.
    assert (result.succeeded, result.failed, result.status_2xx) == (20, 0, 20)
    # The grpc-status in each trailers-only answer turns them into errors.
    assert result.grpc_statuses == {12: 20}
    assert (result.errors, result.images) == (20, 0)


def test_a_timed_run_counts_only_errors_of_its_measured_part(address: str) -> None:
    result = h2load.measure(address, "/InferenceServer/nope", REQUEST, 2, duration=0.3, warm_up=0.3)
    assert result.seconds == 0.3
    assert result.errors == result.grpc_statuses[12] == result.succeeded == result.requests > 0


def test_without_h2load_the_error_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(h2load.H2LoadError, match="apt-get install nghttp2-client"):
        h2load.measure("127.0.0.1:1", "/InferenceServer/inference", REQUEST, 1, requests=1)
