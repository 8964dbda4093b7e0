"""What every API asks of the server, in plain Python types: the wire adapters call only this."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from serve.errors import InvalidArgument, ModelNotFound
from serve.models import ModelInfo, ServedModel
from serve.postprocess import Label, top_classes, top_k_labels

__all__ = ["DEFAULT_TOP_K", "InferenceCore"]

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 5


class InferenceCore:
    def __init__(self, models: Sequence[ServedModel]) -> None:
        if not models:
            raise ValueError("the core needs at least one model")
        self._models = {model.info.name: model for model in models}
        self.default_model = models[0].info.name

    @property
    def models(self) -> list[ModelInfo]:
        return [model.info for model in self._models.values()]

    def model(self, name: str) -> ServedModel:
        """The model called ``name``; the default one for ""."""
        try:
            return self._models[name or self.default_model]
        except KeyError:
            known = ", ".join(self._models)
            raise ModelNotFound(f"model {name!r} is not served here (served: {known})") from None

    async def predict(
        self, images: Sequence[bytes], *, model: str = "", deadline: float | None = None
    ) -> list[int]:
        """The tutorial's API: the top-1 class id of every image, in order."""
        served = self.model(model)
        _check_images(images)
        started = time.perf_counter()
        classes = top_classes(await served.logits(images, deadline))
        _log_request("predict", served, len(images), started)
        return classes

    async def classify(
        self,
        images: Sequence[bytes],
        *,
        top_k: int = 0,
        model: str = "",
        deadline: float | None = None,
    ) -> tuple[str, list[list[Label]]]:
        """The ``top_k`` (0 = default) most probable labels of every image, and the model's name."""
        served = self.model(model)
        k = top_k or DEFAULT_TOP_K
        if not 1 <= k <= len(served.labels):
            raise InvalidArgument(f"top_k must be between 1 and {len(served.labels)}, got {top_k}")
        _check_images(images)
        started = time.perf_counter()
        logits = await served.logits(images, deadline)
        _log_request("classify", served, len(images), started)
        return served.info.name, top_k_labels(logits, k, served.labels)

    async def close(self) -> None:
        for model in self._models.values():
            await model.close()


def _check_images(images: Sequence[bytes]) -> None:
    if not images:
        raise InvalidArgument("the request has no images")


def _log_request(kind: str, served: ServedModel, images: int, started: float) -> None:
    if log.isEnabledFor(logging.DEBUG):
        elapsed_ms = (time.perf_counter() - started) * 1000
        log.debug("%s: %d image(s) on %s in %.1f ms", kind, images, served.info.name, elapsed_ms)
