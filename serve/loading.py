"""Loading one version of a repository entry into a ServedModel.

The format comes from config.pbtxt, ``--backend`` or ``auto``; the instances, threads and batching
from config.pbtxt with the server's flags as defaults; the signature from the model file completed
or checked against config.pbtxt; the image and classification fronts from its parameters and
label files. Everything here blocks (files, sessions, warm-up runs): call it off the event loop.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

import numpy as np

from export.manifest import Preprocessing
from serve.backend_choice import choose_backend
from serve.backends import Backend, BackendSpec, load_backend
from serve.batching import Batcher, BatchingConfig
from serve.config import ServerConfig
from serve.errors import ArtifactError, RepositoryError, TorchgrpcError
from serve.fronts.model_fronts import image_preprocessing, make_fronts
from serve.models import ModelInfo, ServedModel
from serve.provenance import check_export
from serve.repository import CONFIG_NAME, ModelEntry, ModelVersion, scan_model
from serve.repository.settings import IMAGE_INPUT_PARAMETER, THREADS_PARAMETER, ModelSettings
from serve.signature import Signature
from serve.tensors import BYTES, DATATYPES, VARIABLE, TensorSpec

__all__ = [
    "BackendDefaults",
    "OpenedBackend",
    "backend_defaults",
    "check_entry",
    "load_version",
    "open_backend",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendDefaults:
    instances: int
    threads: int
    max_batch_size: int


def backend_defaults(backend: str, cores: int) -> BackendDefaults:
    """Instances, intra-op threads each, and batch size that suit ``backend`` on ``cores`` cores.

    ONNX Runtime sessions are independent, so one single-threaded session per core keeps every
    core busy with no intra-op synchronisation, and batches of up to 16 raise its throughput.
    PyTorch's thread pool is per process, so torch backends get one instance using every core;
    their time per image grows past batch 4 on this kind of machine (`make compare`).
    """
    if backend == "onnxruntime":
        return BackendDefaults(instances=cores, threads=1, max_batch_size=16)
    return BackendDefaults(instances=1, threads=cores, max_batch_size=4)


def load_version(
    entry: ModelEntry, version: ModelVersion, config: ServerConfig, decode_pool: Executor
) -> ServedModel:
    """Loads, checks and warms up one version of ``entry``. Raises TorchgrpcError (with the
    reason the repository index reports) when it can't be served."""
    started = time.perf_counter()
    settings = entry.settings
    choice = choose_backend(config.backend, entry.backends, settings.backend, entry.folder)
    weights_source = check_export(entry.folder, entry.name)
    cores = os.cpu_count() or 1
    defaults = backend_defaults(choice.backend, cores)
    instances = settings.instances or config.instances or defaults.instances
    shown_config = str(entry.folder / CONFIG_NAME)
    threads = _threads(settings, shown_config) or config.threads or defaults.threads
    spec = BackendSpec(
        backend=choice.backend,
        model_file=version.model_files[choice.backend],
        threads=threads,
        inputs=settings.inputs,
        outputs=settings.outputs,
        parameters=settings.parameters,
        allow_python_factories=config.allow_python_factories,
    )
    backends = [_load_backend(spec, version) for _ in range(instances)]
    solo = None
    if backends[0].threads_per_instance and threads < cores:
        solo = _load_backend(BackendSpec(**{**spec.__dict__, "threads": cores}), version)
    model_signature = _signature(settings, backends[0], entry.name)
    for backend in [*backends, *([solo] if solo else [])]:
        _warm_up(backend, version.folder, batching=model_signature.max_batch_size > 0)
    batching = _batching(
        settings, config, defaults, model_signature, backends[0].max_rows, shown_config
    )
    fronts = make_fronts(entry, model_signature, batching.max_batch_size, config, decode_pool)
    batcher = Batcher(
        [fronts.wrap(b.run) for b in backends],
        batching,
        solo=fronts.wrap(solo.run) if solo is not None else None,
    )
    log.info(
        "loaded %s version %d on %s (%s): %d instance(s) x %d thread(s)%s, batches of up to %d, "
        "in %.2f s",
        entry.name, version.number, choice.backend, choice.reason, instances, threads,
        f" + a {cores}-thread instance for lone batches" if solo is not None else "",
        batching.max_batch_size, time.perf_counter() - started,
    )  # fmt: skip
    info = ModelInfo(
        name=entry.name,
        backend=choice.backend,
        weights_source=weights_source or f"file:{spec.model_file.name}",
        input_height=fronts.image.preprocessing.height if fronts.image else 0,
        input_width=fronts.image.preprocessing.width if fronts.image else 0,
        num_classes=len(fronts.scores.labels) if fronts.scores else 0,
    )
    return ServedModel(
        info,
        fronts.signature,
        batcher,
        version=str(version.number),
        instances=instances,
        settings=settings,
        fronts=fronts,
    )


@dataclass(frozen=True)
class OpenedBackend:
    backend: Backend
    # How the model's images are pre-processed; None for a tensor model.
    preprocessing: Preprocessing | None


def open_backend(repository: Path, name: str, backend: str, threads: int) -> OpenedBackend:
    """One bare instance of the newest served version of ``repository/name`` on ``backend``,
    without batcher or fronts: for tools that time the model alone (benchmarks)."""
    entry = scan_model(repository, name)
    if not isinstance(entry, ModelEntry):
        raise entry.error
    version = entry.selected[0]
    if backend not in version.model_files:
        raise ArtifactError(f"{name} has no {backend} file (it has: {', '.join(entry.backends)})")
    check_export(entry.folder, name)
    settings = entry.settings
    opened = load_backend(
        BackendSpec(
            backend=backend,
            model_file=version.model_files[backend],
            threads=threads,
            inputs=settings.inputs,
            outputs=settings.outputs,
            parameters=settings.parameters,
        )
    )
    image_input = settings.parameters.get(IMAGE_INPUT_PARAMETER)
    preprocessing = None
    if image_input is not None:

        def fail(field: str, reason: str) -> NoReturn:
            raise RepositoryError(str(entry.folder / CONFIG_NAME), reason, field)

        (spec,) = (s for s in opened.inputs if s.name == image_input)
        preprocessing = image_preprocessing(spec, settings.parameters, fail)
    return OpenedBackend(opened, preprocessing)


def check_entry(repository: Path, name: str, *, allow_python_factories: bool = False) -> str:
    """Loads every served version of ``repository/name`` as the server would and runs each once:
    a one-line summary, or TorchgrpcError with the reason. For ``python -m export --wrap``."""
    entry = scan_model(repository, name)
    if not isinstance(entry, ModelEntry):
        raise entry.error
    config = ServerConfig(
        model_repository=repository, models=(name,), allow_python_factories=allow_python_factories
    )
    lines = []
    # The pool decodes nothing here (no request runs); its threads start only when used.
    with ThreadPoolExecutor(1) as pool:
        served_versions = [load_version(entry, v, config, pool) for v in entry.selected]
    for version, served in zip(entry.selected, served_versions, strict=True):
        signature = served.signature
        inputs = ", ".join(_describe(spec) for spec in signature.inputs)
        outputs = ", ".join(_describe(spec) for spec in signature.outputs)
        lines.append(
            f"{name} version {version.number} loads and runs on {served.info.backend}: "
            f"inputs {inputs}; outputs {outputs}"
        )
    return "\n".join(lines)


def _describe(spec: TensorSpec) -> str:
    return f"{spec.name} {spec.datatype} {list(spec.shape)}"


def _load_backend(spec: BackendSpec, version: ModelVersion) -> Backend:
    """``load_backend``, with a refusal naming the version folder."""
    try:
        return load_backend(spec)
    except RepositoryError:
        raise
    except ArtifactError as error:
        raise ArtifactError(f"{version.folder}: {error}") from None


def _threads(settings: ModelSettings, shown_config: str) -> int:
    text = settings.parameters.get(THREADS_PARAMETER)
    if text is None:
        return 0
    try:
        threads = int(text)
    except ValueError:
        threads = 0
    if threads < 1:
        raise RepositoryError(
            shown_config, f"must be a whole number >= 1, not {text!r}", THREADS_PARAMETER
        )
    return threads


def _signature(settings: ModelSettings, backend: Backend, name: str) -> Signature:
    """The model's own signature: the backend's tensors (already checked against what
    config.pbtxt declares), batching as config.pbtxt says, or, where config.pbtxt leaves it to
    the model (Triton's auto-complete), whenever every tensor's first axis is variable."""
    tensors = (*backend.inputs, *backend.outputs)
    batch_axis = all(spec.shape and spec.shape[0] == VARIABLE for spec in tensors)
    if settings.max_batch_size > 0:
        fixed = [spec for spec in tensors if not spec.shape or spec.shape[0] != VARIABLE]
        if fixed:
            raise ArtifactError(
                f"{name}: max_batch_size is {settings.max_batch_size} but the model's "
                f"{fixed[0].name!r} has no variable first axis (shape {list(fixed[0].shape)}): "
                "set max_batch_size: 0"
            )
        batching = True
    else:
        batching = settings.complete_from_model and batch_axis
    # A batching model's size is the batcher's business (``_batching``): any positive value
    # marks the axis here.
    return Signature(backend.inputs, backend.outputs, 1 if batching else 0)


def _batching(
    settings: ModelSettings,
    config: ServerConfig,
    defaults: BackendDefaults,
    signature: Signature,
    max_rows: int | None,
    shown_config: str,
) -> BatchingConfig:
    """config.pbtxt's values where it has them, else the server's flags, else the backend's
    defaults. ``--max-batch-size`` caps a model's own max_batch_size: an operator can make
    every model's batches smaller, never larger than the model takes. A model file that bounds
    its batch axis (``max_rows``) caps the defaults, and a config that asks for more is refused:
    its batches would fail at run time."""
    server = config.batching(defaults.max_batch_size)  # the flags; the backend's size if none
    if signature.max_batch_size == 0:
        size = 1  # no batch axis: each request runs alone
    elif settings.max_batch_size:
        if max_rows is not None and settings.max_batch_size > max_rows:
            raise RepositoryError(
                shown_config,
                f"{settings.max_batch_size} is more than the model file takes at once "
                f"({max_rows}, its batch axis's bound): set max_batch_size: {max_rows}",
                "max_batch_size",
            )
        size = min(settings.max_batch_size, config.max_batch_size or settings.max_batch_size)
    else:
        size = min(server.max_batch_size, max_rows or server.max_batch_size)
    delay = settings.max_queue_delay if settings.dynamic_batching else 0.0
    return replace(
        server,
        max_batch_size=size,
        max_queue_delay=delay or server.max_queue_delay,
        max_queue_size=settings.max_queue_size or server.max_queue_size,
    )


def _warm_up(backend: Backend, folder: Path, *, batching: bool) -> None:
    """The first calls allocate and (for TorchScript) optimise the graph: done before serving.
    A model that fails on zeros of its declared shapes fails here, not on a user's request."""
    if any(spec.datatype == BYTES for spec in backend.inputs):
        return  # no neutral value for strings: the first request warms it up
    sample = {spec.name: _zeros(spec, batching) for spec in backend.inputs}
    try:
        backend.run(sample)
        backend.run(sample)
    except TorchgrpcError:
        raise
    except Exception as error:  # the model's own code: any exception means it can't be served
        raise ArtifactError(
            f"{folder}: the model fails on a zero-filled sample ({_shapes(sample)}): "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from None


def _zeros(spec: TensorSpec, batching: bool) -> np.ndarray:
    shape = [1 if d == VARIABLE else d for d in spec.shape]
    return np.zeros(shape, dtype=DATATYPES[spec.datatype].dtype)


def _shapes(sample: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"{name} {list(array.shape)}" for name, array in sample.items())
