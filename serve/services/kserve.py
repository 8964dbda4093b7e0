"""inference.GRPCInferenceService: KServe v2 (the Open Inference Protocol) with Triton's extensions.

Wire-compatible with Triton's superset, so tritonclient, perf_analyzer and KServe's clients work
unchanged: health, metadata, inference (unary and streamed), model configuration, statistics and
the repository index. Tensors are converted in ``kserve_tensors``; everything else is here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

import grpc

from serve.batching import Call
from serve.core import InferenceCore
from serve.models import ServedModel
from serve.pb.kserve import grpc_service_pb2 as pb
from serve.pb.kserve import grpc_service_pb2_grpc as pb_grpc
from serve.pb.kserve import model_config_pb2 as config_pb
from serve.services.kserve_tensors import decode_request, encode_response
from serve.services.status import Context, call_of, rpc_errors, status_of
from serve.services.streaming import serve_stream
from serve.statistics import Duration, InferenceStatistics
from serve.tensors import BYTES, TensorSpec

__all__ = ["EXTENSIONS", "KServeService"]

SERVER_NAME = "torchgrpc"
# Triton's opt-in: a stream's first failure ends it with a real gRPC status.
GRPC_ERROR_HEADER = "triton_grpc_error"
# Exactly the extensions served here (perf_analyzer looks for "statistics").
EXTENSIONS = ("classification", "model_configuration", "statistics")
# The protocol's datatype names to ModelConfig's DataType enum (BYTES is TYPE_STRING there).
_CONFIG_TYPES = {
    name: f"TYPE_{'STRING' if name == BYTES else name}"
    for name in (
        "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
        "FP16", "FP32", "FP64", BYTES,
    )
}  # fmt: skip


def _server_version() -> str:
    try:
        return version("torchgrpc")
    except PackageNotFoundError:
        return "unknown"


class KServeService(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

    def __init__(self, core: InferenceCore, is_ready: Callable[[], bool]) -> None:
        self._core = core
        self._is_ready = is_ready

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self, server)

    @rpc_errors
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @rpc_errors
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._is_ready())

    @rpc_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        ready = self._is_ready() and self._core.is_ready(request.name, request.version)
        return pb.ModelReadyResponse(ready=ready)

    @rpc_errors
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=_server_version(), extensions=EXTENSIONS
        )

    @rpc_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        model = self._core.model(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=[model.version],
            platform=model.platform,
            inputs=[_tensor_metadata(spec) for spec in model.signature.inputs],
            outputs=[_tensor_metadata(spec) for spec in model.signature.outputs],
        )

    @rpc_errors
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        response = await self._core.infer(decode_request(request), call_of(context))
        # tritonclient's as_numpy reads numeric outputs only from raw contents.
        return encode_response(response, raw=bool(request.raw_input_contents))

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> None:
        """Each request answered in its own response, in order, carrying its id; a failed request
        gets ``error_message`` and the stream goes on, unless the client sent the header
        ``triton_grpc_error: true``: then the first failure ends the stream with its status."""
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get(GRPC_ERROR_HEADER, "").lower() != "true":
            await serve_stream(requests, context, self._stream_answer, ordered=True)
            return
        try:
            await serve_stream(requests, context, self._stream_answer_or_raise, ordered=True)
        except Exception as error:
            code, details = status_of(_first(error))
        else:
            return
        await context.abort(code, details)

    async def _stream_answer_or_raise(
        self, request: pb.ModelInferRequest, call: Call
    ) -> pb.ModelStreamInferResponse:
        response = await self._core.infer(decode_request(request), call)
        raw = bool(request.raw_input_contents)
        return pb.ModelStreamInferResponse(infer_response=encode_response(response, raw=raw))

    async def _stream_answer(
        self, request: pb.ModelInferRequest, call: Call
    ) -> pb.ModelStreamInferResponse:
        try:
            return await self._stream_answer_or_raise(request, call)
        except Exception as error:
            _, message = status_of(error)
            return pb.ModelStreamInferResponse(
                error_message=message,
                infer_response=pb.ModelInferResponse(
                    model_name=request.model_name, model_version=request.model_version,
                    id=request.id,
                ),
            )  # fmt: skip

    @rpc_errors
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Context
    ) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(
            config=_model_config(self._core.model(request.name, request.version))
        )

    @rpc_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        return pb.ModelStatisticsResponse(
            model_stats=[
                _model_statistics(model, statistics)
                for model, statistics in self._core.statistics(request.name, request.version)
            ]
        )

    @rpc_errors
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=status.name, version=status.version, state=status.state,
                    reason=status.reason,
                )
                for status in self._core.repository_index()
            ]
        )  # fmt: skip


def _first(error: BaseException) -> Exception:
    """The first real failure inside task-group wrapping."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error if isinstance(error, Exception) else RuntimeError(repr(error))


def _unimplemented(what: str) -> Callable[..., object]:
    """A handler for an RPC of Triton's superset that this server doesn't offer."""

    async def handler(self: KServeService, request: object, context: Context) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, what)

    return handler


for _rpc, _why in {
    "RepositoryModelLoad": "model control is not enabled on this server",
    "RepositoryModelUnload": "model control is not enabled on this server",
    "SystemSharedMemoryStatus": "shared memory is not supported: send tensors in the request",
    "SystemSharedMemoryRegister": "shared memory is not supported: send tensors in the request",
    "SystemSharedMemoryUnregister": "shared memory is not supported: send tensors in the request",
    "CudaSharedMemoryStatus": "CUDA shared memory is not supported here (no GPU)",
    "CudaSharedMemoryRegister": "CUDA shared memory is not supported here (no GPU)",
    "CudaSharedMemoryUnregister": "CUDA shared memory is not supported here (no GPU)",
    "TraceSetting": "trace settings are not supported",
    "LogSettings": "log settings are not supported",
}.items():
    setattr(KServeService, _rpc, _unimplemented(f"{_rpc}: {_why}"))


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.shape
    )


def _dims(spec: TensorSpec, batching: bool) -> Sequence[int]:
    """Triton's config dims leave out the batch axis of a batching model."""
    return spec.shape[1:] if batching else spec.shape


def _model_config(model: ServedModel) -> config_pb.ModelConfig:
    signature = model.signature
    batching = signature.max_batch_size > 0
    # A bundled image model takes its images or its tensor: either input alone.
    alternatives = model.image is not None
    return config_pb.ModelConfig(
        name=model.name,
        platform=model.platform,
        max_batch_size=signature.max_batch_size,
        version_policy=config_pb.ModelVersionPolicy(
            latest=config_pb.ModelVersionPolicy.Latest(num_versions=1)
        ),
        input=[
            config_pb.ModelInput(
                name=spec.name,
                data_type=_CONFIG_TYPES[spec.datatype],
                dims=_dims(spec, batching),
                optional=alternatives,
            )
            for spec in signature.inputs
        ],
        output=[
            config_pb.ModelOutput(
                name=spec.name, data_type=_CONFIG_TYPES[spec.datatype], dims=_dims(spec, batching)
            )
            for spec in signature.outputs
        ],
        instance_group=[
            config_pb.ModelInstanceGroup(
                name=model.info.backend,
                count=model.instances,
                kind=config_pb.ModelInstanceGroup.Kind.KIND_CPU,
            )
        ],
        dynamic_batching=config_pb.ModelDynamicBatching(
            max_queue_delay_microseconds=round(model.batcher.config.max_queue_delay * 1e6),
            # A stream's answers come in its requests' order.
            preserve_ordering=True,
            default_queue_policy=config_pb.ModelQueuePolicy(
                max_queue_size=model.batcher.config.max_queue_size
            ),
        ),
        model_transaction_policy=config_pb.ModelTransactionPolicy(decoupled=False),
    )


def _duration(duration: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=duration.count, ns=duration.ns)


def _model_statistics(model: ServedModel, statistics: InferenceStatistics) -> pb.ModelStatistics:
    s = statistics
    return pb.ModelStatistics(
        name=model.name,
        version=model.version,
        last_inference=s.last_inference_ms,
        inference_count=s.inference_count,
        execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(s.success),
            fail=_duration(s.fail),
            queue=_duration(s.queue),
            compute_input=_duration(s.compute_input),
            compute_infer=_duration(s.compute_infer),
            compute_output=_duration(s.compute_output),
            cache_hit=pb.StatisticDuration(),
            cache_miss=pb.StatisticDuration(),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=_duration(times.compute_input),
                compute_infer=_duration(times.compute_infer),
                compute_output=_duration(times.compute_output),
            )
            for size, times in sorted(s.batches.items())
        ],
    )
