"""torchgrpc.v1.Classifier: top-k labels, bidirectional streaming, and model discovery."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc

from serve.core import InferenceCore
from serve.models import ModelInfo
from serve.pb.torchgrpc.v1 import classifier_pb2 as pb
from serve.pb.torchgrpc.v1 import classifier_pb2_grpc as pb_grpc
from serve.postprocess import Label
from serve.services.status import Context, deadline_of, rpc_errors, status_of

__all__ = ["ClassifierService"]

# Per stream, at most this many images are in flight; beyond it the server stops reading, and
# HTTP/2 flow control slows the client down instead of memory growing.
STREAM_WINDOW = 64


class ClassifierService(pb_grpc.ClassifierServicer):  # type: ignore[misc]
    SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Classifier"].full_name

    def __init__(self, core: InferenceCore) -> None:
        self._core = core

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_ClassifierServicer_to_server(self, server)

    @rpc_errors
    async def Classify(self, request: pb.ClassifyRequest, context: Context) -> pb.ClassifyResponse:
        model, results = await self._core.classify(
            request.images, top_k=request.top_k, model=request.model, deadline=deadline_of(context)
        )
        return pb.ClassifyResponse(
            classifications=[_classification(labels) for labels in results], model=model
        )

    async def ClassifyStream(
        self,
        requests: AsyncIterator[pb.ClassifyStreamRequest],
        context: Context,
    ) -> AsyncIterator[pb.ClassifyStreamResponse]:
        """Classifies items concurrently and yields each as soon as it is done."""
        done: asyncio.Queue[pb.ClassifyStreamResponse | None] = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)
        deadline = deadline_of(context)

        async def classify_one(item: pb.ClassifyStreamRequest) -> None:
            try:
                await done.put(await self._classify_item(item, deadline))
            finally:
                window.release()

        async def read_all() -> None:
            async with asyncio.TaskGroup() as group:
                async for item in requests:
                    await window.acquire()
                    group.create_task(classify_one(item))
            await done.put(None)

        reader = asyncio.create_task(read_all())
        try:
            while (response := await done.get()) is not None:
                yield response
            await reader
        finally:
            reader.cancel()

    async def _classify_item(
        self, item: pb.ClassifyStreamRequest, deadline: float | None
    ) -> pb.ClassifyStreamResponse:
        try:
            _, results = await self._core.classify(
                [item.image], top_k=item.top_k, model=item.model, deadline=deadline
            )
        except Exception as error:
            code, message = status_of(error)
            return pb.ClassifyStreamResponse(
                id=item.id, error=pb.Error(code=code.value[0], message=message)
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
