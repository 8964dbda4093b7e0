"""The tutorial's API, byte-for-byte: ``InferenceServer/inference`` -> one class id per image."""

from __future__ import annotations

import grpc

from serve.core import InferenceCore
from serve.pb import inference_pb2, inference_pb2_grpc
from serve.services.mounting import WireLimits, mount
from serve.services.status import Context, call_of, rpc_errors

__all__ = ["TutorialService"]


class TutorialService(inference_pb2_grpc.InferenceServerServicer):  # type: ignore[misc]
    SERVICE_NAME = "InferenceServer"

    def __init__(self, core: InferenceCore) -> None:
        self._core = core

    def register(self, server: grpc.aio.Server, limits: WireLimits) -> None:
        mount(inference_pb2_grpc.add_InferenceServerServicer_to_server, self, server, limits)

    @rpc_errors
    async def inference(
        self, request: inference_pb2.InferenceRequest, context: Context
    ) -> inference_pb2.InferenceReply:
        predictions = await self._core.predict(request.image, call=call_of(context))
        return inference_pb2.InferenceReply(pred=predictions)
