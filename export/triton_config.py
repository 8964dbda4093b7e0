"""config.pbtxt, written: Triton's ModelConfig in protobuf text format, from plain Python.

The text is written by hand rather than through the generated protobuf classes, so exporting
needs no server code (``serve/pb``). Only the fields the export stage and ``--wrap`` set are
here; the server parses every field of ModelConfig (serve.repository.model_config).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "DATATYPES",
    "DEFAULT_MAX_BATCH_SIZE",
    "FACTORY_PARAMETER",
    "SOFTMAX_PARAMETER",
    "TORCHSCRIPT_OPTIMIZE_PARAMETER",
    "TensorConfig",
    "TritonConfig",
    "config_text",
]

# The protocol's datatype names this server serves; config.pbtxt spells them TYPE_<name>, and
# BYTES as TYPE_STRING.
DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
)
# The batch the export stage lets the server form, and --wrap's default for a batching model.
DEFAULT_MAX_BATCH_SIZE = 16
# Our `parameters` keys beside the image ones (export.manifest.Preprocessing writes those).
SOFTMAX_PARAMETER = "softmax"
FACTORY_PARAMETER = "factory"
TORCHSCRIPT_OPTIMIZE_PARAMETER = "torchscript_optimize"

# Protobuf text format's escapes; other bytes outside printable ASCII are written in octal.
_ESCAPES = {'"': '\\"', "'": "\\'", "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


@dataclass(frozen=True)
class TensorConfig:
    """An input or output: ``dims`` without the batch axis when the model batches (-1: any
    size), as config.pbtxt writes them."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    label_filename: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a tensor needs a name")
        if self.datatype not in DATATYPES:
            raise ValueError(
                f"tensor {self.name!r}: datatype {self.datatype!r} is not one of "
                f"{', '.join(DATATYPES)}"
            )
        bad = [d for d in self.dims if d < 1 and d != -1]
        if bad:
            raise ValueError(f"tensor {self.name!r}: dims must be >= 1 or -1, not {bad[0]}")


@dataclass(frozen=True)
class TritonConfig:
    """What config.pbtxt says of a model. ``platform`` "" leaves the choice to the server (by
    its ``--backend`` flag and the files present)."""

    name: str
    max_batch_size: int
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    platform: str = ""
    dynamic_batching: bool = False
    parameters: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_batch_size < 0:
            raise ValueError(f"max_batch_size must be >= 0, not {self.max_batch_size}")
        for kind, tensors in (("input", self.inputs), ("output", self.outputs)):
            names = [tensor.name for tensor in tensors]
            if len(set(names)) != len(names):
                raise ValueError(f"two {kind}s share a name: {names}")


def config_text(config: TritonConfig) -> str:
    """config.pbtxt's text: it parses as Triton's ModelConfig (``inference.ModelConfig``)."""
    lines = [f"name: {_quoted(config.name)}"]
    if config.platform:
        lines.append(f"platform: {_quoted(config.platform)}")
    lines.append(f"max_batch_size: {config.max_batch_size}")
    lines += _tensors("input", config.inputs)
    lines += _tensors("output", config.outputs)
    if config.dynamic_batching:
        lines.append("dynamic_batching { }")
    lines += [
        f"parameters {{ key: {_quoted(key)} value {{ string_value: {_quoted(value)} }} }}"
        for key, value in config.parameters.items()
    ]
    return "\n".join(lines) + "\n"


def _tensors(kind: str, tensors: tuple[TensorConfig, ...]) -> list[str]:
    if not tensors:
        return []
    items = [f"  {{ {_tensor(tensor)} }}" for tensor in tensors]
    return [f"{kind} [", ",\n".join(items), "]"]


def _tensor(tensor: TensorConfig) -> str:
    datatype = "TYPE_STRING" if tensor.datatype == "BYTES" else f"TYPE_{tensor.datatype}"
    dims = "".join(f" {d}," for d in tensor.dims).rstrip(",")
    text = f"name: {_quoted(tensor.name)} data_type: {datatype} dims: [{dims} ]"
    if tensor.label_filename:
        text += f" label_filename: {_quoted(tensor.label_filename)}"
    return text


def _quoted(text: str) -> str:
    """A protobuf text format string literal (UTF-8 bytes, escaped)."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'
