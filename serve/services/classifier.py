"""torchgrpc.v1.Classifier: top-k labels, bidirectional streaming, and model discovery."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc

from serve.batching import Call
from serve.core import InferenceCore
from serve.fronts.classification import Label
from serve.models import ModelInfo
from serve.pb.torchgrpc.v1 import classifier_pb2 as pb
from serve.pb.torchgrpc.v1 import classifier_pb2_grpc as pb_grpc
from serve.services.mounting import WireLimits, mount
from serve.services.status import Context, call_of, rpc_errors, status_of
from serve.services.streaming import serve_stream

__all__ = ["ClassifierService"]


class ClassifierService(pb_grpc.ClassifierServicer):  # type: ignore[misc]
    SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Classifier"].full_name

    def __init__(self, core: InferenceCore) -> None:
        self._core = core

    def register(self, server: grpc.aio.Server, limits: WireLimits) -> None:
        mount(pb_grpc.add_ClassifierServicer_to_server, self, server, limits)

    @rpc_errors
    async def Classify(self, request: pb.ClassifyRequest, context: Context) -> pb.ClassifyResponse:
        model, results = await self._core.classify(
            request.images, top_k=request.top_k, model=request.model, call=call_of(context)
        )
        return pb.ClassifyResponse(
            classifications=[_classification(labels) for labels in results], model=model
        )

    async def ClassifyStream(
        self,
        requests: AsyncIterator[pb.ClassifyStreamRequest],
        context: Context,
    ) -> None:
        """Classifies items concurrently and writes each result as soon as it is done."""
        await serve_stream(requests, context, self._classify_item, _failed_item, ordered=False)

    async def _classify_item(
        self, item: pb.ClassifyStreamRequest, call: Call
    ) -> pb.ClassifyStreamResponse:
        _, results = await self._core.classify(
            [item.image], top_k=item.top_k, model=item.model, call=call
        )
        return pb.ClassifyStreamResponse(id=item.id, classification=_classification(results[0]))

    @rpc_errors
    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[_model_info(info) for info in self._core.models],
            default_model=self._core.default_model,
        )


def _failed_item(item: pb.ClassifyStreamRequest, error: Exception) -> pb.ClassifyStreamResponse:
    code, message = status_of(error)
    return pb.ClassifyStreamResponse(
        id=item.id, error=pb.Error(code=code.value[0], message=message)
    )


def _classification(labels: Sequence[Label]) -> pb.Classification:
    return pb.Classification(
        labels=[
            pb.Label(class_id=x.class_id, name=x.name, probability=x.probability) for x in labels
        ]
    )


def _model_info(info: ModelInfo) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=info.name,
        backend=info.backend,
        weights_source=info.weights_source,
        input_height=info.input_height,
        input_width=info.input_width,
        num_classes=info.num_classes,
    )
