"""The least a grpc.aio server can do for a request without blocking its event loop: a floor.

Its `inference` handler hands each image to a thread, which decodes, pre-processes and classifies
it exactly as the in-process runs do, and answers. No batching, no limits, no validation, no
health: what it costs over the in-process work is gRPC's and the hand-offs between the event loop
and a thread, which no handler can remove. `make benchmark` measures it in the same slices as
torchgrpc, with the in-process runs' threading:
- `--instances 1` (the default): one thread with every core on its model, as the in-process
  single-image run (`benchmarks.ceiling.LoneImage`), for latency at concurrency 1;
- `--instances N`: N threads, each with its own model on cores/N intra-op threads, as the
  in-process ceiling (`benchmarks.ceiling.CeilingRunner`), for throughput.

    python -m benchmarks.bare_aio_server --model efficientnet_lite0 --port 50053 [--instances 2]
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from benchmarks import reference_server
from benchmarks.ceiling import ImageModel, open_image_model, run_images
from serve.pb import inference_pb2, inference_pb2_grpc


class BareInferenceService(inference_pb2_grpc.InferenceServerServicer):  # type: ignore[misc]
    def __init__(self, model_name: str, repository: Path, instances: int) -> None:
        threads = max(1, (os.cpu_count() or 1) // instances)
        # Opened here, so a model that can't be served stops the server before it starts.
        self._unclaimed: queue.SimpleQueue[ImageModel] = queue.SimpleQueue()
        for _ in range(instances):
            self._unclaimed.put(open_image_model(repository, model_name, "onnxruntime", threads))
        self._local = threading.local()
        self._thread = ThreadPoolExecutor(
            instances, thread_name_prefix="model", initializer=self._claim_model
        )

    def _claim_model(self) -> None:
        # Each thread of the pool takes its own model as it starts, as each in-process one runs
        # its own.
        self._local.model = self._unclaimed.get_nowait()

    def _classify(self, data: bytes) -> int:
        return int(run_images(self._local.model, data, 1)[0].argmax())

    async def inference(
        self, request: inference_pb2.InferenceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> inference_pb2.InferenceReply:
        loop = asyncio.get_running_loop()
        predictions = [await loop.run_in_executor(self._thread, self._classify, data)
                       for data in request.image]  # fmt: skip
        return inference_pb2.InferenceReply(pred=predictions)


def main() -> None:
    parser = reference_server.parser(__doc__.splitlines()[0], default_port=50053)
    parser.add_argument("--instances", type=int, default=1, help="threads, each with a model")
    args = parser.parse_args()
    reference_server.run(args, BareInferenceService(args.model, args.artifacts, args.instances))


if __name__ == "__main__":
    main()
