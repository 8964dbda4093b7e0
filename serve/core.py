"""What every API asks of the server, in plain Python types: the wire adapters call only this.

The tutorial API (class ids), the Classifier API (top-k labels) and the KServe API (named
tensors) all reach a model's one batcher through here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

from serve.batching import Call
from serve.errors import InvalidArgument
from serve.fronts.classification import Label, check_k
from serve.model_table import ModelTable
from serve.models import ModelInfo, ServedModel
from serve.statistics import InferenceStatistics
from serve.tensors import InferRequest, InferResponse, RequestedOutput, Tensor, datatype_of

__all__ = ["DEFAULT_TOP_K", "InferenceCore"]

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 5
_SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")


class InferenceCore:
    def __init__(self, table: ModelTable) -> None:
        self._table = table

    @property
    def default_model(self) -> str:
        return self._table.default_model

    @property
    def models(self) -> list[ModelInfo]:
        """Every served model (its newest version)."""
        return [model.info for model in self._table.newest()]

    def model(self, name: str, version: str = "") -> ServedModel:
        """The model called ``name`` (the default one for "") at ``version`` ("" = newest)."""
        return self._table.model(name, version)

    def versions(self, name: str) -> list[str]:
        """The served versions of ``name``, newest first."""
        return [str(number) for number in self._table.versions(name)]

    def is_ready(self, name: str, version: str = "") -> bool:
        return self._table.is_ready(name, version)

    async def predict(self, images: Sequence[bytes], *, model: str = "", call: Call) -> list[int]:
        """The tutorial's API: the most probable class id of every image, in order."""
        served = self.model(model)
        served.image_front()  # a tensor model says so before "not a classifier"
        scores = served.class_scores()
        started = time.perf_counter()
        outputs = await served.infer_images(images, call)
        _log_request("predict", served, len(images), started)
        return scores.top_classes(outputs[scores.name])

    async def classify(
        self, images: Sequence[bytes], *, top_k: int = 0, model: str = "", call: Call
    ) -> tuple[str, list[list[Label]]]:
        """The ``top_k`` (0 = default) most probable labels of every image, and the model's name."""
        served = self.model(model)
        served.image_front()  # a tensor model says so before "not a classifier"
        scores = served.class_scores()
        k = top_k or DEFAULT_TOP_K
        check_k(k, scores.labels)
        started = time.perf_counter()
        outputs = await served.infer_images(images, call)
        _log_request("classify", served, len(images), started)
        return served.name, scores.top_k(outputs[scores.name], k)

    async def infer(self, request: InferRequest, call: Call) -> InferResponse:
        """KServe v2: named tensors in, the requested outputs (all by default) out."""
        served = self.model(request.model, request.version)
        call = _with_request_parameters(call, request.parameters)
        wanted = request.outputs or tuple(RequestedOutput(s.name) for s in served.signature.outputs)
        for output in wanted:
            served.signature.output(output.name)
            if output.classification:
                check_k(output.classification, served.labelled(output.name).labels)
        started = time.perf_counter()
        outputs = await served.infer(request.inputs, call)
        _log_request("infer", served, -1, started)
        tensors = []
        for output in wanted:
            data = outputs[output.name]
            if output.classification:
                data = served.labelled(output.name).classification(data, output.classification)
            tensors.append(Tensor(output.name, datatype_of(data).name, data))
        return InferResponse(served.name, served.version, tuple(tensors), request.id)

    def statistics(
        self, name: str = "", version: str = ""
    ) -> list[tuple[ServedModel, InferenceStatistics]]:
        """Every served version's statistics for "", else the named model's (every served
        version of it when ``version`` is "")."""
        if not name:
            models = self._table.served()
        elif version:
            models = [self.model(name, version)]
        else:
            self.model(name)  # NOT_FOUND, with the reason, when nothing of it serves
            models = list(self._table.versions(name).values())
        return [(model, model.batcher.statistics) for model in models]


def _with_request_parameters(call: Call, parameters: Mapping[str, object]) -> Call:
    """Triton's reserved request parameters: ``timeout`` (microseconds) shortens the deadline;
    sequence parameters need a sequence model, which no model here is. Others are ignored, as
    Triton ignores what it doesn't know (``priority`` among them: there is one queue)."""
    sequence = any(parameters.get(name) for name in _SEQUENCE_PARAMETERS)
    if sequence:
        raise InvalidArgument("sequence parameters were given, but no model here is stateful")
    timeout = parameters.get("timeout")
    if timeout is None:
        return call
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0:
        raise InvalidArgument(f"parameter 'timeout' must be microseconds >= 0, not {timeout!r}")
    if timeout == 0:  # Triton's "no timeout"
        return call
    deadline = time.monotonic() + timeout / 1e6
    if call.deadline is not None:
        deadline = min(deadline, call.deadline)
    return replace(call, deadline=deadline)


def _log_request(kind: str, served: ServedModel, rows: int, started: float) -> None:
    if log.isEnabledFor(logging.DEBUG):
        elapsed_ms = (time.perf_counter() - started) * 1000
        log.debug("%s: %d row(s) on %s in %.1f ms", kind, rows, served.name, elapsed_ms)
