"""inference.GRPCInferenceService: KServe v2 (the Open Inference Protocol) with Triton's extensions.

Wire-compatible with Triton's superset, so tritonclient, perf_analyzer and KServe's clients work
unchanged: health, metadata, inference (unary and streamed), model configuration, statistics and
the repository index. Tensors are converted in ``kserve_tensors``; everything else is here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from importlib.metadata import PackageNotFoundError, version

import grpc

from serve.batching import Call
from serve.core import InferenceCore
from serve.errors import FailedPrecondition, InvalidArgument, ModelNotFound, shortened
from serve.model_control import ModelControl
from serve.models import ServedModel
from serve.pb.kserve import grpc_service_pb2 as pb
from serve.pb.kserve import grpc_service_pb2_grpc as pb_grpc
from serve.services.kserve_config import effective_config
from serve.services.kserve_tensors import decode_request, encode_response
from serve.services.mounting import WireLimits, mount
from serve.services.status import Context, call_of, rpc_errors, status_of
from serve.services.streaming import serve_stream
from serve.statistics import Duration, InferenceStatistics
from serve.tensors import TensorSpec

__all__ = ["EXTENSIONS", "KServeService"]

SERVER_NAME = "torchgrpc"
# Triton's opt-in: a stream's first failure ends it with a real gRPC status.
GRPC_ERROR_HEADER = "triton_grpc_error"
# Exactly the extensions served here (perf_analyzer looks for "statistics").
EXTENSIONS = ("classification", "model_configuration", "model_repository", "statistics")


def _server_version() -> str:
    try:
        return version("torchgrpc")
    except PackageNotFoundError:
        return "unknown"


class KServeService(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

    def __init__(
        self, core: InferenceCore, control: ModelControl, is_ready: Callable[[], bool]
    ) -> None:
        self._core = core
        self._control = control
        self._is_ready = is_ready

    def register(self, server: grpc.aio.Server, limits: WireLimits) -> None:
        mount(pb_grpc.add_GRPCInferenceServiceServicer_to_server, self, server, limits)

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
            versions=self._core.versions(model.name),
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
            await serve_stream(requests, context, self._stream_answer, _failed_answer, ordered=True)
            return
        try:
            await serve_stream(requests, context, self._stream_answer, _raise, ordered=True)
        except Exception as error:
            code, details = status_of(_first(error))
        else:
            return
        await context.abort(code, details)

    async def _stream_answer(
        self, request: pb.ModelInferRequest, call: Call
    ) -> pb.ModelStreamInferResponse:
        response = await self._core.infer(decode_request(request), call)
        raw = bool(request.raw_input_contents)
        return pb.ModelStreamInferResponse(infer_response=encode_response(response, raw=raw))

    @rpc_errors
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Context
    ) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(
            config=effective_config(self._core.model(request.name, request.version))
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
        _check_repository(request.repository_name)
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=status.name, version=status.version, state=status.state,
                    reason=status.reason,
                )
                for status in await self._control.index(ready_only=request.ready)
            ]
        )  # fmt: skip

    @rpc_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        """Loads (or reloads) a model from the repository's files. Files or a config sent in the
        request are refused: what runs is what is on the server's disk."""
        self._check_explicit("RepositoryModelLoad")
        _check_repository(request.repository_name)
        files = sorted(key for key in request.parameters if key.startswith("file:"))
        if files:
            raise InvalidArgument(
                f"parameter {shortened(files[0])}: model files sent in a load request are "
                "refused; place them in the model repository"
            )
        if "config" in request.parameters:
            raise InvalidArgument(
                "parameter 'config': a config sent in a load request is refused; edit the "
                "model's config.pbtxt in the repository"
            )
        await self._control.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @rpc_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        """Stops serving a model; answers once its requests in flight have finished."""
        self._check_explicit("RepositoryModelUnload")
        _check_repository(request.repository_name)
        await self._control.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    def _check_explicit(self, rpc: str) -> None:
        mode = self._control.mode
        if mode != "explicit":
            raise FailedPrecondition(
                f"{rpc}: model control is {mode!r} on this server; start it with "
                "--model-control explicit"
            )


def _check_repository(name: str) -> None:
    """There is one repository; Triton's clients send its name empty."""
    if name:
        raise ModelNotFound(
            f"repository {shortened(name)}: this server has one model repository; send "
            "repository_name empty"
        )


def _failed_answer(request: pb.ModelInferRequest, error: Exception) -> pb.ModelStreamInferResponse:
    _, message = status_of(error)
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )


def _raise(request: pb.ModelInferRequest, error: Exception) -> pb.ModelStreamInferResponse:
    """Triton's opt-in (``triton_grpc_error``): the first failure ends the stream."""
    raise error


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
