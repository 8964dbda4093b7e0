"""Tiny real ONNX models and repository folders for the repository and model-control tests.

Built with onnx.helper (no PyTorch), in milliseconds: what a test repository needs to exercise
loading, versions and swaps, with outputs that tell which version answered.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

__all__ = ["ADDER_CONFIG", "write_adder", "write_model_folder"]

# The adder's config: two inputs, two outputs, a batch axis.
ADDER_CONFIG = """
max_batch_size: 8
input [
  { name: "a" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "b" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "sum" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "product" data_type: TYPE_FP32 dims: [ 4 ] }
]
dynamic_batching { }
"""


def write_adder(path: Path, offset: float) -> None:
    """``sum = a + b + offset`` and ``product = a * b``, over float32 [N, 4]: the offset says
    which version answered."""
    batch = ["N", 4]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["a_plus_b"]),
            helper.make_node("Add", ["a_plus_b", "offset"], ["sum"]),
            helper.make_node("Mul", ["a", "b"], ["product"]),
        ],
        "adder",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, batch),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, batch),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, batch),
            helper.make_tensor_value_info("product", TensorProto.FLOAT, batch),
        ],
        [helper.make_tensor("offset", TensorProto.FLOAT, [1], [offset])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def write_model_folder(
    repository: Path, name: str, config: str | None, versions: dict[int, float]
) -> Path:
    """``repository/name`` with config.pbtxt (None: none) and an adder per version (number ->
    offset)."""
    folder = repository / name
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (folder / "config.pbtxt").write_text(config)
    for number, offset in versions.items():
        write_adder(folder / str(number) / "model.onnx", offset)
    return folder
