"""The least a grpc.aio server can do for a request without blocking its event loop: the c1 floor.

Its `inference` handler hands each image to one thread, which decodes, pre-processes and
classifies it exactly as the in-process single-image run does (`serve.ceiling.LoneImage`: ONNX
Runtime with every core on the model), and answers. No batching, no limits, no validation, no
health: what its latency adds to the in-process one is gRPC's round trip and the two hand-offs
between the event loop and a thread, the part of torchgrpc's c1 latency that no handler can
remove. `make benchmark` times it in the same slices as torchgrpc's c1.

    python -m benchmarks.bare_aio_server --model efficientnet_lite0 --port 50053
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from benchmarks import reference_server
from serve.backends import load_backend, load_manifest
from serve.ceiling import run_images
from serve.pb import inference_pb2, inference_pb2_grpc


class BareInferenceService(inference_pb2_grpc.InferenceServerServicer):  # type: ignore[misc]
    def __init__(self, model_name: str, artifacts: Path) -> None:
        self._manifest = load_manifest(artifacts, model_name)
        self._backend = load_backend("onnxruntime", artifacts, self._manifest, os.cpu_count() or 1)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="model")

    def _classify(self, data: bytes) -> int:
        return int(run_images(self._backend, data, self._manifest, 1)[0].argmax())

    async def inference(
        self, request: inference_pb2.InferenceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> inference_pb2.InferenceReply:
        loop = asyncio.get_running_loop()
        predictions = [await loop.run_in_executor(self._thread, self._classify, data)
                       for data in request.image]  # fmt: skip
        return inference_pb2.InferenceReply(pred=predictions)


def main() -> None:
    reference_server.main(__doc__.splitlines()[0], BareInferenceService, default_port=50053)


if __name__ == "__main__":
    main()
