"""``torch.export`` programs (model.pt2): an ExportedProgram saved by ``torch.export.save``, or an
AOTInductor package from ``torch._inductor.aoti_compile_and_package``; the archive says which.

An ExportedProgram records its signature: inputs named as its forward's arguments, outputs
``output__0``, ``output__1``, ... (Triton's PyTorch convention), their datatypes, and -1 for every
axis exported as dynamic (a ``torch.export.Dim``). config.pbtxt may rename them, by position, and
must agree with them. An AOTInductor package records only how many tensors go in and come out, so
config.pbtxt must declare them.

Two things torch doesn't guard against are refused before loading. ``torch.export.load`` unpickles
whatever its archive marks as pickled (weights, constants, custom objects), and falls back to an
unrestricted ``torch.load`` for example inputs that aren't plain tensors: a program is loaded only
when its archive holds tensors alone. An AOTInductor package is a shared library, that is code: it
runs only where code from the repository may (``--allow-python-factories``).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np
import sympy  # type: ignore[import-untyped]
import torch
from torch.export.pt2_archive import constants as pt2
from torch.utils import _pytree as pytree

from export.convert import TORCH_DATATYPES
from serve.backends.base import BackendSpec, first_sentence, reconciled, require_declared
from serve.backends.torch_runtime import Loaded, PinnedModule
from serve.errors import ArtifactError
from serve.tensors import VARIABLE, TensorSpec

__all__ = ["TorchExportBackend"]

T = TypeVar("T")
# What an archive holds, by the folders torch writes (below the archive's one root folder).
_PROGRAM = "ExportedProgram"
_AOTI = "AOTInductor package"


class TorchExportBackend:
    name = "torch_export"
    threads_per_instance = False

    def __init__(self, spec: BackendSpec) -> None:
        # A program exported with Dim("batch", max=N) refuses more rows than N: the loader caps
        # its batches. Unknown (None) for AOTInductor packages, which don't check.
        self.max_rows: int | None = None
        bounds: dict[str, int] = {}
        if _archive_kind(spec.model_file) == _AOTI:
            if not spec.allow_python_factories:
                raise ArtifactError(
                    f"{spec.model_file.name} is an AOTInductor package, which is compiled code: "
                    "running code from the repository is off: start the server with "
                    "--allow-python-factories"
                )
            require_declared(spec, "an AOTInductor package")
            self._module = PinnedModule(lambda: _load_package(spec), spec.threads)
        else:
            self._module = PinnedModule(lambda: _load_program(spec, bounds), spec.threads)
        self.max_rows = bounds.get("max_rows")
        self.inputs, self.outputs = self._module.inputs, self._module.outputs

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._module.run(inputs)


def _load_program(spec: BackendSpec, bounds: dict[str, int]) -> Loaded:
    """The program's module and signature; ``bounds["max_rows"]`` is set to its batch axis's
    upper bound when it has a finite one."""
    program = _loaded(spec.model_file, torch.export.load)
    signature = program.graph_signature
    nodes = {node.name: node for node in program.graph.nodes}
    file = spec.model_file.name
    inputs = [
        _tensor_spec(file, "input", str(name), nodes.get(str(name)))
        for name in signature.user_inputs
    ]
    outputs = [
        _tensor_spec(file, "output", f"output__{index}", nodes.get(str(name)))
        for index, name in enumerate(signature.user_outputs)
    ]
    max_rows = _batch_bound(program, [nodes.get(str(name)) for name in signature.user_inputs])
    if max_rows is not None:
        bounds["max_rows"] = max_rows
    module = program.module()
    in_spec = program.call_spec.in_spec

    def forward(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # The forward's own arguments (keywords, nested lists) from the flat tensors, and its
        # results flattened in the signature's order.
        args, kwargs = pytree.tree_unflatten(list(tensors), in_spec)
        return tuple(pytree.tree_leaves(module(*args, **kwargs)))

    return (
        forward,
        _declared("input", spec.inputs, tuple(inputs)),
        _declared("output", spec.outputs, tuple(outputs)),
    )


def _batch_bound(
    program: torch.export.ExportedProgram, inputs: list[torch.fx.Node | None]
) -> int | None:
    """The upper bound of the first input's first axis when it is symbolic and bounded."""
    value = inputs[0].meta.get("val") if inputs and inputs[0] is not None else None
    if not isinstance(value, torch.Tensor) or not value.shape or isinstance(value.shape[0], int):
        return None
    ranges = program.range_constraints.get(value.shape[0].node.expr)
    # Unbounded is torch's int_oo, which is no sympy Integer (though it calls itself finite).
    if ranges is None or not isinstance(ranges.upper, sympy.Integer):
        return None
    upper = int(ranges.upper)
    return upper if 0 < upper < 2**31 else None


def _load_package(spec: BackendSpec) -> Loaded:
    package = _loaded(spec.model_file, torch._inductor.aoti_load_package)
    in_spec, out_spec = (pytree.treespec_loads(text) for text in package.loader.get_call_spec())
    for kind, declared, count in (
        ("input", spec.inputs, in_spec.num_leaves),
        ("output", spec.outputs, out_spec.num_leaves),
    ):
        if len(declared) != count:
            raise ArtifactError(
                f"config.pbtxt declares {len(declared)} {kind}(s), the AOTInductor package has "
                f"{count}"
            )

    def forward(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Flat tensors in and out: the package's __call__ would parse its call spec every time.
        return tuple(package.loader.boxed_run(list(tensors)))

    return forward, spec.inputs, spec.outputs


def _loaded(path: Path, load: Callable[[str], T]) -> T:
    """``load(path)``, with any failure of torch's as one line naming the file."""
    try:
        return load(str(path))
    except Exception as error:  # torch raises all sorts on a file it can't use
        raise ArtifactError(f"{path.name} can't be loaded: {first_sentence(error)}") from None


def _tensor_spec(file: str, kind: str, name: str, node: torch.fx.Node | None) -> TensorSpec:
    """A program's tensor as the protocol sees it: symbolic (dynamic) axes are -1."""
    value = node.meta.get("val") if node is not None else None
    if not isinstance(value, torch.Tensor):
        raise ArtifactError(f"{file}: {kind} {name!r} is not a tensor: only tensors are served")
    datatype = TORCH_DATATYPES.get(value.dtype)
    if datatype is None:
        raise ArtifactError(f"{file}: {kind} {name!r} is {value.dtype}, not servable")
    shape = tuple(size if isinstance(size, int) else VARIABLE for size in value.shape)
    return TensorSpec(name, datatype, shape)


def _declared(
    kind: str, declared: tuple[TensorSpec, ...], found: tuple[TensorSpec, ...]
) -> tuple[TensorSpec, ...]:
    """What config.pbtxt declares, checked position by position against the program's."""
    if not declared:
        return found
    if len(declared) != len(found):
        raise ArtifactError(
            f"config.pbtxt declares {len(declared)} {kind}(s), the program has {len(found)}: "
            f"{', '.join(spec.name for spec in found)}"
        )
    return tuple(reconciled(kind, d, f) for d, f in zip(declared, found, strict=True))


def _archive_kind(path: Path) -> str:
    """_PROGRAM or _AOTI, once the file is a .pt2 archive that loads without unpickling."""
    try:
        with zipfile.ZipFile(path) as archive:
            return _checked_kind(path.name, archive)
    except (OSError, zipfile.BadZipFile, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ArtifactError(f"{path.name} is not a readable .pt2 archive ({error})") from None


def _checked_kind(name: str, archive: zipfile.ZipFile) -> str:
    roots = {entry.split("/", 1)[0] for entry in archive.namelist()}
    root = roots.pop() if len(roots) == 1 else ""
    format_file = f"{root}/{pt2.ARCHIVE_FORMAT_PATH}"
    if format_file not in archive.namelist() or archive.read(format_file) != b"pt2":
        raise ArtifactError(
            f"{name} is not a .pt2 archive (torch.export.save or aoti_compile_and_package)"
        )
    # Each file's path inside the root folder, as torch names it, to its zip entry.
    files = {entry.split("/", 1)[1]: entry for entry in archive.namelist() if "/" in entry}
    if any(inner.startswith(pt2.AOTINDUCTOR_DIR) for inner in files):
        return _AOTI
    if not any(inner.startswith(pt2.MODELS_DIR) for inner in files):
        raise ArtifactError(f"{name} holds neither an ExportedProgram nor an AOTInductor package")
    pickled = _pickled(archive, files)
    if pickled:
        raise ArtifactError(
            f"{name} holds a pickled Python object ({pickled}), which is never loaded: "
            "export a program whose weights, constants and example inputs are tensors"
        )
    return _PROGRAM


def _pickled(archive: zipfile.ZipFile, files: Mapping[str, str]) -> str:
    """The first file of a program's archive that ``torch.export.load`` would unpickle, or ""."""
    for inner, entry in files.items():
        if inner.startswith(pt2.SAMPLE_INPUTS_DIR):
            if not _plain_tensors(archive.read(entry)):
                return inner
        elif inner.startswith((pt2.WEIGHTS_DIR, pt2.CONSTANTS_DIR)):
            if inner.endswith(".pt"):  # the old layout: the whole state dict as one pickle
                return inner
            if inner.endswith("_config.json"):
                for payload in json.loads(archive.read(entry))["config"].values():
                    path_name = str(payload["path_name"])
                    objects = inner.startswith(pt2.CONSTANTS_DIR) and not path_name.startswith(
                        pt2.TENSOR_CONSTANT_FILENAME_PREFIX
                    )
                    if payload.get("use_pickle") or objects:
                        return f"{inner}: {path_name}"
    return ""


def _plain_tensors(data: bytes) -> bool:
    """Whether example inputs load with ``weights_only`` (torch.export.load tries that first)."""
    if not data:
        return True
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # whatever the restricted unpickler refuses
        return False
    return True
