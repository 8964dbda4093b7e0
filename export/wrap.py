"""`python -m export --wrap FILE --name NAME`: an existing model file becomes a repository entry.

```
<repository>/<name>/config.pbtxt            written from the file's signature and the options
<repository>/<name>/labels.txt              with --labels
<repository>/<name>/<version>/model.onnx    ONNX (ONNX Runtime)
                              model.pt      TorchScript
                              model.pt2     a torch.export program, or an AOTInductor package
                              weights.pt    a state dict for --factory's module (eager)
```

The file is copied, never moved. Inputs and outputs come from the file where it records them
(ONNX, torch.export programs); otherwise from ``--input``, with the outputs found by running the
model once on zeros. The entry is staged in a hidden folder of the repository, checked there by
the server's own loader (it must load and run), and only then moved into place, so a broken entry
never lands. Adding a version to an existing model writes its config.pbtxt anew.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import onnx
import torch
from torch import nn

from export.convert import TORCH_DATATYPES, torchscript_is_wanted
from export.manifest import (
    CONFIG_NAME,
    IMAGE_INPUT_PARAMETER,
    LABELS_NAME,
    MANIFEST_NAME,
    ONNX_NAME,
    TORCH_EXPORT_NAME,
    TORCHSCRIPT_NAME,
    WEIGHTS_NAME,
    Preprocessing,
)
from export.names import name_problem
from export.triton_config import (
    DATATYPES,
    DEFAULT_MAX_BATCH_SIZE,
    FACTORY_PARAMETER,
    SOFTMAX_PARAMETER,
    TensorConfig,
    TritonConfig,
    config_text,
)

__all__ = [
    "Checker",
    "WrapError",
    "WrapRequest",
    "WrapResult",
    "check_with_server",
    "parse_tensor",
    "wrap",
]

# Factories under this package are torchgrpc's own: the server always allows them.
OUR_FACTORIES = "export.zoo."
_FACTORY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class _Format:
    # The model file's name in the version folder, and config.pbtxt's platform for it.
    filename: str
    platform: str
    # Whether the file records its inputs and outputs (else --input declares them).
    signed: bool


_FORMATS = {
    "onnx": _Format(ONNX_NAME, "onnxruntime_onnx", signed=True),
    "torchscript": _Format(TORCHSCRIPT_NAME, "pytorch_libtorch", signed=False),
    "program": _Format(TORCH_EXPORT_NAME, "torch_export", signed=True),
    "aoti": _Format(TORCH_EXPORT_NAME, "torch_aoti", signed=False),
    "eager": _Format(WEIGHTS_NAME, "pytorch_eager", signed=False),
}


class WrapError(Exception):
    """The file can't become a repository entry; the message says why, in one line."""


class Checker(Protocol):
    """Loads entry ``name`` of ``repository`` as the server would and runs it once; returns a
    one-line summary, raises when it doesn't load or run."""

    def __call__(self, repository: Path, name: str, *, allow_python_factories: bool) -> str: ...


@dataclass(frozen=True)
class WrapRequest:
    file: Path
    name: str
    repository: Path
    version: int = 1
    # With --image: the model is an image model, its first input fed from encoded images.
    preprocessing: Preprocessing | None = None
    labels: Path | None = None
    softmax: bool = False
    # None: DEFAULT_MAX_BATCH_SIZE when the model has a batch axis, else 0.
    max_batch_size: int | None = None
    # config.pbtxt's dims (without the batch axis when batching). Inputs are required for the
    # formats that don't record them; outputs are then found by running the model.
    inputs: tuple[TensorConfig, ...] = ()
    outputs: tuple[TensorConfig, ...] = ()
    # `package.module:function` returning the nn.Module a state dict fills (eager).
    factory: str = ""
    force: bool = False


@dataclass(frozen=True)
class WrapResult:
    folder: Path
    model_file: Path
    config: TritonConfig
    # The check's summary (a line per version checked).
    summary: str
    # The entry runs code of the user's (a factory of theirs, an AOTInductor package's compiled
    # code): the server serves it only with --allow-python-factories.
    runs_code: bool


def parse_tensor(text: str) -> TensorConfig:
    """``NAME:DATATYPE:DIMS``, say ``input:FP32:3,224,224`` (dims as config.pbtxt writes them,
    -1 for any size, empty for a scalar)."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3:
        raise ValueError(f"{text!r} is not NAME:DATATYPE:DIMS (say input:FP32:3,224,224)")
    name, datatype, dims = parts
    try:
        shape = tuple(int(d) for d in dims.split(",")) if dims else ()
    except ValueError:
        raise ValueError(f"{text!r}: dims {dims!r} are not comma-separated numbers") from None
    try:
        return TensorConfig(name, datatype.upper(), shape)
    except ValueError as error:
        raise ValueError(f"{text!r}: {error}") from None


def check_with_server(repository: Path, name: str, *, allow_python_factories: bool) -> str:
    """The server's own check (serve.loading.check_entry), imported only when called: exporting
    never loads server code."""
    loading = importlib.import_module("serve.loading")
    check: Checker | None = getattr(loading, "check_entry", None)
    if check is None:
        raise WrapError("this server can't check entries yet (no serve.loading.check_entry)")
    return check(repository, name, allow_python_factories=allow_python_factories)


def wrap(request: WrapRequest, check: Checker) -> WrapResult:
    """Writes the entry, checked by ``check`` before it is moved into the repository."""
    _refuse_early(request)
    kind = _kind(request.file, request.factory)
    form = _FORMATS[kind]
    request.repository.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=request.repository, prefix=".wrap-") as tmp:
        staged = Path(tmp) / request.name
        model_file = staged / str(request.version) / form.filename
        model_file.parent.mkdir(parents=True)
        shutil.copyfile(request.file, model_file)
        labels = _read_labels(request.labels) if request.labels else None
        config = _config(request, kind, model_file, labels)
        folder = request.repository / request.name
        keep_config = (folder / CONFIG_NAME).is_file() and bool(
            _other_versions(folder, request.version)
        )
        if keep_config:
            # A version beside others: the model's config.pbtxt (version_policy, instance_group,
            # what its users rely on) and labels stay, and the new file is checked against them.
            _copy_entry_files(folder, staged)
        else:
            if labels is not None:
                (staged / LABELS_NAME).write_text("".join(f"{label}\n" for label in labels))
            (staged / CONFIG_NAME).write_text(config_text(config))
        theirs = bool(request.factory) and not request.factory.startswith(OUR_FACTORIES)
        runs_code = kind == "aoti" or theirs
        summary = _checked(check, Path(tmp), request.name, runs_code)
        _install(staged, folder, str(request.version), with_config=not keep_config)
    model_file = folder / str(request.version) / form.filename
    return WrapResult(folder, model_file, config, summary, runs_code)


def _refuse_early(request: WrapRequest) -> None:
    """What can be refused before a byte is copied."""
    problem = name_problem(request.name)
    if problem:
        raise WrapError(f"model name {request.name!r} {problem}")
    if request.version < 1:
        raise WrapError(f"version must be 1 or more, not {request.version}")
    if request.max_batch_size is not None and request.max_batch_size < 0:
        raise WrapError(f"max batch size must be 0 or more, not {request.max_batch_size}")
    try:
        mode = os.stat(request.file).st_mode
    except OSError as error:
        raise WrapError(f"{request.file}: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        raise WrapError(f"{request.file} is not a regular file")
    folder = request.repository / request.name
    if folder.is_symlink() or (os.path.lexists(folder) and not folder.is_dir()):
        raise WrapError(f"{folder} exists and is not a plain folder")
    if os.path.lexists(folder / str(request.version)) and not request.force:
        raise WrapError(f"{folder / str(request.version)} exists: pass --force to replace it")


def _kind(file: Path, factory: str) -> str:
    suffix = file.suffix.lower()
    if factory:
        if suffix not in (".pt", ".pth"):
            raise WrapError(f"--factory goes with a state dict (.pth or .pt), not {file.name}")
        if not _FACTORY.fullmatch(factory):
            raise WrapError(f"--factory {factory!r} is not package.module:function")
        return "eager"
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".pt2":
        return "aoti" if _is_aoti_package(file) else "program"
    if suffix == ".pt":
        return "torchscript"
    if suffix == ".pth":
        raise WrapError(f"{file.name} is a state dict: pass --factory package.module:function")
    raise WrapError(
        f"{file.name}: wrap a .onnx, .pt (TorchScript), .pt2 (torch.export or AOTInductor) "
        "file, or a state dict (.pth, .pt) with --factory"
    )


def _is_aoti_package(file: Path) -> bool:
    """An AOTInductor package holds compiled code; a torch.export program holds a graph."""
    try:
        with zipfile.ZipFile(file) as archive:
            return any("/data/aotinductor/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _config(
    request: WrapRequest, kind: str, model_file: Path, labels: tuple[str, ...] | None
) -> TritonConfig:
    inputs, outputs, max_batch_size = _signature(request, kind, model_file)
    parameters: dict[str, str] = {}
    if request.preprocessing is not None:
        image = _image_input(inputs[0], request.preprocessing, max_batch_size)
        inputs = (image, *inputs[1:])
        parameters[IMAGE_INPUT_PARAMETER] = image.name
        parameters.update(request.preprocessing.to_parameters())
    if labels is not None:
        outputs = _labelled(outputs, len(labels))
    if request.softmax:
        parameters[SOFTMAX_PARAMETER] = _softmax_output(outputs, labelled=labels is not None)
    if request.factory:
        parameters[FACTORY_PARAMETER] = request.factory
    try:
        return TritonConfig(
            name=request.name,
            max_batch_size=max_batch_size,
            inputs=inputs,
            outputs=outputs,
            platform=_FORMATS[kind].platform,
            dynamic_batching=max_batch_size > 0,
            parameters=parameters,
        )
    except ValueError as error:
        raise WrapError(str(error)) from None


Tensors = tuple[TensorConfig, ...]


def _signature(request: WrapRequest, kind: str, model_file: Path) -> tuple[Tensors, Tensors, int]:
    """Inputs and outputs as config.pbtxt writes them, and max_batch_size."""
    if _FORMATS[kind].signed:
        if request.inputs or request.outputs:
            raise WrapError(
                f"{request.file.name} records its inputs and outputs: drop --input/--output"
            )
        reader = _onnx_signature if kind == "onnx" else _program_signature
        inputs, outputs, max_rows = reader(model_file)
        max_batch_size = _batch_size(inputs, outputs, request.max_batch_size)
        if max_rows is not None and request.max_batch_size is None:
            # A program exported with Dim("batch", max=N) takes no more than N rows at once.
            max_batch_size = min(max_batch_size, max_rows)
        if max_batch_size:
            inputs, outputs = _without_batch_axis(inputs), _without_batch_axis(outputs)
        return inputs, outputs, max_batch_size
    if not request.inputs:
        raise WrapError(
            f"{request.file.name} doesn't record its inputs: pass --input NAME:DATATYPE:DIMS"
        )
    max_batch_size = (
        DEFAULT_MAX_BATCH_SIZE if request.max_batch_size is None else request.max_batch_size
    )
    outputs = request.outputs or _run_for_outputs(request, kind, model_file, max_batch_size)
    return request.inputs, outputs, max_batch_size


def _batch_size(inputs: Tensors, outputs: Tensors, requested: int | None) -> int:
    """A first dimension of any size on every input and output is the batch axis."""
    batches = all(t.dims and t.dims[0] == -1 for t in (*inputs, *outputs))
    if requested == 0 or (requested is None and not batches):
        return 0
    if not batches:
        fixed = next(t for t in (*inputs, *outputs) if not t.dims or t.dims[0] != -1)
        raise WrapError(
            f"{fixed.name} has no batch axis (dims {list(fixed.dims)}): "
            "pass --max-batch-size 0 for a model that doesn't batch"
        )
    return requested or DEFAULT_MAX_BATCH_SIZE


def _without_batch_axis(tensors: Tensors) -> Tensors:
    return tuple(replace(t, dims=t.dims[1:]) for t in tensors)


def _onnx_signature(model_file: Path) -> tuple[Tensors, Tensors, int | None]:
    try:
        model = onnx.load(str(model_file), load_external_data=False)
    except Exception as error:
        raise WrapError(f"not an ONNX model: {_first_line(error)}") from None
    graph = model.graph
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
        raise WrapError("the ONNX model keeps weights in external files: save it as one file")
    initializers = {t.name for t in graph.initializer}
    inputs = tuple(_onnx_tensor(v) for v in graph.input if v.name not in initializers)
    return inputs, tuple(_onnx_tensor(v) for v in graph.output), None


def _onnx_tensor(value: Any) -> TensorConfig:
    if value.type.WhichOneof("value") != "tensor_type":
        raise WrapError(f"ONNX {value.name!r} is not a tensor: it can't be served")
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        raise WrapError(f"ONNX {value.name!r} has no shape recorded: can't write its dims")
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
    element = str(onnx.TensorProto.DataType.Name(tensor.elem_type))
    names = {"FLOAT": "FP32", "DOUBLE": "FP64", "FLOAT16": "FP16", "STRING": "BYTES"}
    return TensorConfig(value.name, _datatype(names.get(element, element), value.name), dims)


def _program_signature(model_file: Path) -> tuple[Tensors, Tensors, int | None]:
    """A torch.export program's inputs (named as its forward's arguments) and outputs (Triton's
    PyTorch names: output__0, output__1, ...), read by the server's own backend: one reader,
    with its refusal of pickled content (torch.export.load alone unpickles what it finds)."""
    from serve.backends import BackendSpec, load_backend
    from serve.errors import TorchgrpcError

    try:
        backend = load_backend(BackendSpec("torch_export", model_file, threads=1))
    except TorchgrpcError as error:
        raise WrapError(f"not a servable torch.export program: {error}") from None
    return (
        tuple(TensorConfig(s.name, s.datatype, s.shape) for s in backend.inputs),
        tuple(TensorConfig(s.name, s.datatype, s.shape) for s in backend.outputs),
        backend.max_rows,
    )


def _run_for_outputs(
    request: WrapRequest, kind: str, model_file: Path, max_batch_size: int
) -> Tensors:
    """The outputs of a model run once on zeros: two rows when it batches, to find the axis."""
    if any(-1 in t.dims for t in request.inputs):
        raise WrapError("an input has a dimension of any size: pass --output NAME:DATATYPE:DIMS")
    batch = (2,) if max_batch_size else ()
    zeros = [torch.zeros(batch + t.dims, dtype=_torch_dtype(t)) for t in request.inputs]
    model = _load(kind, model_file, request.factory)
    try:
        with torch.no_grad():
            result = model(*zeros)
    except Exception as error:
        raise WrapError(f"running the model on zeros failed: {_first_line(error)}") from None
    results = list(result) if isinstance(result, tuple | list) else [result]
    return tuple(_output(f"output__{i}", r, batch) for i, r in enumerate(results))


def _output(name: str, result: object, batch: tuple[int, ...]) -> TensorConfig:
    if not isinstance(result, torch.Tensor):
        raise WrapError(f"{name} is a {type(result).__name__}, not a tensor")
    shape = tuple(result.shape)
    if shape[: len(batch)] != batch:
        raise WrapError(
            f"{name} is {list(shape)} for a batch of {batch[0]}: the first dimension must be the "
            "batch (or pass --max-batch-size 0 for a model that doesn't batch)"
        )
    return TensorConfig(name, _torch_datatype(result.dtype, name), shape[len(batch) :])


def _load(kind: str, model_file: Path, factory: str) -> Callable[..., Any]:
    try:
        if kind == "torchscript":
            with torchscript_is_wanted():
                scripted = torch.jit.load(str(model_file), map_location="cpu")  # type: ignore[no-untyped-call]
            module: Callable[..., Any] = scripted.eval()
        elif kind == "aoti":
            from torch._inductor import aoti_load_package

            module = aoti_load_package(str(model_file))
        else:
            module = _eager(model_file, factory)
    except WrapError:
        raise
    except Exception as error:
        raise WrapError(f"{model_file.name} doesn't load as {kind}: {_first_line(error)}") from None
    return module


def _eager(weights: Path, factory: str) -> nn.Module:
    module_name, _, function = factory.partition(":")
    build = getattr(importlib.import_module(module_name), function, None)
    if not callable(build):
        raise WrapError(f"--factory {factory}: {module_name} has no function {function}")
    model = build()
    if not isinstance(model, nn.Module):
        raise WrapError(f"--factory {factory} returned a {type(model).__name__}, not an nn.Module")
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def _image_input(first: TensorConfig, pre: Preprocessing, max_batch_size: int) -> TensorConfig:
    """The image input, its height and width set from --image where the model leaves them open."""
    expected = pre.output_shape
    if not max_batch_size:
        raise WrapError("an image model needs a batch axis (--max-batch-size 0 was given)")
    fits = len(first.dims) == 3 and all(
        d in (-1, e) for d, e in zip(first.dims, expected, strict=True)
    )
    if first.datatype != "FP32" or not fits:
        raise WrapError(
            f"the image input {first.name!r} is {first.datatype} {list(first.dims)}: --image and "
            f"--layout {pre.layout} need FP32 {list(expected)}"
        )
    return replace(first, dims=expected)


def _read_labels(path: Path) -> tuple[str, ...]:
    """One label a line (the server's reading: a final empty line is not a label)."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as error:
        raise WrapError(f"--labels {path}: {error}") from None
    if lines[-1] == "":
        lines.pop()
    if not lines:
        raise WrapError(f"--labels {path} has no labels")
    return tuple(line.removesuffix("\r") for line in lines)


def _labelled(outputs: Tensors, count: int) -> Tensors:
    """The outputs, the one whose last dimension is ``count`` naming the labels file."""
    matching = [t.name for t in outputs if t.dims and t.dims[-1] == count]
    if len(matching) != 1:
        shapes = ", ".join(f"{t.name} {list(t.dims)}" for t in outputs)
        which = "no output has" if not matching else "more than one output has"
        raise WrapError(
            f"--labels has {count} labels, but {which} {count} as its last dimension ({shapes})"
        )
    return tuple(
        replace(t, label_filename=LABELS_NAME) if t.name in matching else t for t in outputs
    )


def _softmax_output(outputs: Tensors, *, labelled: bool) -> str:
    chosen = [t for t in outputs if t.label_filename] if labelled else list(outputs)
    if len(chosen) != 1:
        raise WrapError("--softmax needs --labels, or a model with one output")
    if not chosen[0].datatype.startswith("FP"):
        raise WrapError(f"--softmax: {chosen[0].name} is {chosen[0].datatype}, not logits")
    return chosen[0].name


def _checked(check: Checker, repository: Path, name: str, runs_code: bool) -> str:
    """The server's check of the staged entry: any failure to load or run refuses it. Code the
    user wraps (their factory, their compiled package) is theirs to run."""
    try:
        return check(repository, name, allow_python_factories=runs_code)
    except WrapError:
        raise
    except Exception as error:
        raise WrapError(f"the entry doesn't load and run: {_first_line(error)}") from None


def _other_versions(folder: Path, version: int) -> list[str]:
    return [
        p.name
        for p in folder.iterdir()
        if p.is_dir() and p.name.isascii() and p.name.isdigit() and p.name != str(version)
    ]


def _copy_entry_files(folder: Path, staged: Path) -> None:
    """An existing model's own files (config.pbtxt, label files) into the staged entry; not its
    manifest.json, whose hashes name versions the staged entry doesn't hold."""
    for path in folder.iterdir():
        if path.is_file() and path.name != MANIFEST_NAME:
            shutil.copyfile(path, staged / path.name)


def _install(staged: Path, folder: Path, version: str, *, with_config: bool) -> None:
    """Moves the staged entry into place with renames: a new model folder whole; into an
    existing one the version folder (replacing it), and with ``with_config`` the config.pbtxt
    and labels that were checked with it."""
    if not os.path.lexists(folder):
        staged.rename(folder)
        return
    if with_config:
        for name in (CONFIG_NAME, LABELS_NAME):
            if (staged / name).exists():
                (staged / name).replace(folder / name)
    target = folder / version
    if os.path.lexists(target):
        previous = staged.parent / "previous"
        target.rename(previous)
    (staged / version).rename(target)


def _datatype(name: str, tensor: str) -> str:
    if name not in DATATYPES:
        raise WrapError(f"{tensor} is {name}, which this server doesn't serve")
    return name


def _torch_datatype(dtype: torch.dtype, tensor: str) -> str:
    if dtype not in TORCH_DATATYPES:
        raise WrapError(f"{tensor} is {dtype}, which this server doesn't serve")
    return TORCH_DATATYPES[dtype]


def _torch_dtype(tensor: TensorConfig) -> torch.dtype:
    for dtype, datatype in TORCH_DATATYPES.items():
        if datatype == tensor.datatype:
            return dtype
    raise WrapError(f"input {tensor.name} is {tensor.datatype}: a PyTorch model can't take it")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
