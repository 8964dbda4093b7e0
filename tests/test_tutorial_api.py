"""The tutorial's API, unchanged on the wire: a client generated from the tutorial's own
inference.proto, run as its own program and dialing [::]:PORT as the tutorial's client does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from serve.pb import inference_pb2, inference_pb2_grpc
from tests.conftest import CAT_JPG, CAT_PNG, COFFEE_JPG, EGYPTIAN_CAT, ESPRESSO, ROOT, ServerThread

TUTORIAL_PROTO = """syntax = "proto3";

service InferenceServer {
    rpc inference (InferenceRequest) returns (InferenceReply) {}
}

message InferenceRequest {
    repeated bytes image = 1;
}

message InferenceReply {
    repeated uint32 pred = 1;
}
"""

# The tutorial's client, in essence: grpc.aio, the generated stub, "[::]:50052", bytes in, ids out.
TUTORIAL_CLIENT = """
import asyncio, json, sys
import grpc
from inference_pb2 import InferenceRequest
from inference_pb2_grpc import InferenceServerStub

async def main(address, paths):
    async with grpc.aio.insecure_channel(address) as channel:
        stub = InferenceServerStub(channel)
        images = [open(p, "rb").read() for p in paths]
        reply = await stub.inference(InferenceRequest(image=images))
        print(json.dumps(list(reply.pred)))

asyncio.run(main(sys.argv[1], sys.argv[2:]))
"""


def test_the_proto_is_the_tutorials_byte_for_byte() -> None:
    assert (ROOT / "protos" / "inference.proto").read_text() == TUTORIAL_PROTO


@pytest.fixture(scope="module")
def tutorial_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tutorial")
    (folder / "inference.proto").write_text(TUTORIAL_PROTO)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{folder}",
            f"--python_out={folder}",
            f"--grpc_python_out={folder}",
            "inference.proto",
        ],
        check=True,
        cwd=folder,
    )
    (folder / "client.py").write_text(TUTORIAL_CLIENT)
    return folder


def run_tutorial_client(folder: Path, address: str, *images: Path) -> list[int]:
    done = subprocess.run(
        [sys.executable, "client.py", address, *map(str, images)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return list(json.loads(done.stdout))


def test_tutorial_client_unchanged_dialing_ipv6_any(
    tutorial_client: Path, server: ServerThread
) -> None:
    assert run_tutorial_client(tutorial_client, f"[::]:{server.server.port}", CAT_JPG) == [
        EGYPTIAN_CAT
    ]


def test_several_images_one_prediction_each_in_order(
    tutorial_client: Path, server: ServerThread
) -> None:
    images = (COFFEE_JPG, CAT_JPG, CAT_PNG, COFFEE_JPG)
    assert run_tutorial_client(tutorial_client, server.address, *images) == [
        ESPRESSO,
        EGYPTIAN_CAT,
        EGYPTIAN_CAT,
        ESPRESSO,
    ]


def test_errors_reach_the_tutorial_api_as_statuses(channel: grpc.Channel) -> None:
    stub = inference_pb2_grpc.InferenceServerStub(channel)
    with pytest.raises(grpc.RpcError) as failure:
        stub.inference(inference_pb2.InferenceRequest(image=[CAT_JPG.read_bytes(), b"nope"]))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.value.details().startswith("image 1:")
