"""config.pbtxt parsed strictly into ModelSettings: every field we read, every refusal's message."""

from __future__ import annotations

import pytest

from serve.errors import RepositoryError
from serve.repository import ModelSettings, VersionPolicy, parse_config
from serve.tensors import TensorSpec

FILE = "models/resnet/config.pbtxt"

FULL = """
name: "resnet"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "input" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, -1, -1 ] },
  { name: "text" data_type: TYPE_STRING dims: [ 1 ] }
]
output [
  { name: "logits" data_type: TYPE_FP32 dims: [ 1000 ] label_filename: "labels.txt" },
  { name: "features" data_type: TYPE_FP16 dims: [ 512 ] }
]
version_policy { latest { num_versions: 2 } }
dynamic_batching {
  max_queue_delay_microseconds: 2500
  preferred_batch_size: [ 4, 8 ]
  default_queue_policy { max_queue_size: 64 }
}
instance_group [ { kind: KIND_CPU count: 2 }, { kind: KIND_AUTO } ]
parameters { key: "resize" value { string_value: "256" } }
parameters { key: "mean" value { string_value: "0.485,0.456,0.406" } }
"""


def parse(text: str, folder: str = "resnet") -> ModelSettings:
    return parse_config(text, FILE, folder)


def refusal(text: str) -> str:
    with pytest.raises(RepositoryError) as caught:
        parse(text)
    return caught.value.message


def test_every_field_we_read() -> None:
    settings = parse(FULL)
    assert settings == ModelSettings(
        name="resnet",
        backend="onnxruntime",
        max_batch_size=8,
        inputs=(
            TensorSpec("input", "FP32", (-1, 3, -1, -1)),
            TensorSpec("text", "BYTES", (-1, 1)),
        ),
        outputs=(
            TensorSpec("logits", "FP32", (-1, 1000)),
            TensorSpec("features", "FP16", (-1, 512)),
        ),
        complete_from_model=False,
        instances=3,
        dynamic_batching=True,
        max_queue_delay=0.0025,
        preferred_batch_sizes=(4, 8),
        max_queue_size=64,
        version_policy=VersionPolicy("latest", num_versions=2),
        label_files={"logits": "labels.txt"},
        parameters={"mean": "0.485,0.456,0.406", "resize": "256"},
    )
    assert settings.model_filename == "model.onnx"
    # The parsed proto is kept for the ModelConfig RPC.
    assert settings.config.platform == "onnxruntime_onnx"
    assert list(settings.config.output[0].dims) == [1000]


def test_an_empty_config_leaves_everything_to_the_model_file() -> None:
    settings = parse("")
    assert settings == ModelSettings(name="resnet")
    assert (settings.backend, settings.inputs, settings.complete_from_model) == (None, (), True)
    assert settings.version_policy == VersionPolicy("latest", num_versions=1)
    assert (settings.instances, settings.max_queue_size, settings.model_filename) == (None, 0, None)


def test_without_batching_the_shape_is_the_dims() -> None:
    settings = parse(
        'backend: "pytorch" input { name: "x" data_type: TYPE_INT64 dims: [ 2, 3 ] } '
        'output { name: "y" data_type: TYPE_BOOL dims: [ -1 ] }'
    )
    assert settings.inputs == (TensorSpec("x", "INT64", (2, 3)),)
    assert settings.outputs == (TensorSpec("y", "BOOL", (-1,)),)
    assert (settings.backend, settings.max_batch_size, settings.complete_from_model) == (
        "torchscript",
        0,
        False,
    )


def test_inputs_without_outputs_are_completed_from_the_model() -> None:
    settings = parse('input { name: "x" data_type: TYPE_FP32 dims: [ 4 ] }')
    assert settings.inputs == (TensorSpec("x", "FP32", (4,)),)
    assert (settings.outputs, settings.complete_from_model) == ((), True)


@pytest.mark.parametrize(
    ("fields", "backend"),
    [
        ('platform: "onnxruntime_onnx"', "onnxruntime"),
        ('backend: "onnxruntime"', "onnxruntime"),
        ('platform: "onnxruntime_onnx" backend: "onnxruntime"', "onnxruntime"),
        ('platform: "pytorch_libtorch"', "torchscript"),
        ('backend: "pytorch"', "torchscript"),
        ('platform: "torch_aoti"', "torch_export"),
        ('platform: "torch_export"', "torch_export"),
        ('platform: "pytorch_eager"', "eager"),
        ('default_model_filename: "resnet50.pt2"', "torch_export"),
        ('default_model_filename: "net.onnx"', "onnxruntime"),
    ],
)
def test_platform_and_backend_names(fields: str, backend: str) -> None:
    assert parse(fields).backend == backend


def test_tritons_aoti_pairing_of_platform_and_backend() -> None:
    assert parse('platform: "torch_aoti" backend: "pytorch"').backend == "torch_export"


def test_default_model_filename_overrides_the_backends_file() -> None:
    settings = parse('platform: "pytorch_eager" default_model_filename: "state.pth"')
    assert (settings.backend, settings.model_filename) == ("eager", "state.pth")
    assert parse('platform: "pytorch_eager"').model_filename == "weights.pt"


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("", VersionPolicy("latest", num_versions=1)),
        ("version_policy { }", VersionPolicy("latest", num_versions=1)),
        ("version_policy { all { } }", VersionPolicy("all")),
        (
            "version_policy { specific { versions: [ 3, 1 ] } }",
            VersionPolicy("specific", 1, (3, 1)),
        ),
    ],
)
def test_version_policies(policy: str, expected: VersionPolicy) -> None:
    assert parse(policy).version_policy == expected


def test_version_policy_selection() -> None:
    on_disk = [1, 2, 3, 10]
    assert VersionPolicy("latest", num_versions=2).select(on_disk) == (10, 3)
    assert VersionPolicy("latest", num_versions=9).select(on_disk) == (10, 3, 2, 1)
    assert VersionPolicy().select(on_disk) == (10,)
    assert VersionPolicy("all").select(on_disk) == (10, 3, 2, 1)
    specific = VersionPolicy("specific", versions=(1, 3, 7))
    assert (specific.select(on_disk), specific.missing(on_disk)) == ((3, 1), (7,))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'name: "resnet"\n\ncolour: "red"\n',
            f'{FILE}:3:1: Message type "inference.ModelConfig" has no field named "colour".',
        ),
        (
            'input {\n  name: "x"\n  shape: [ 3 ]\n}',
            f'{FILE}:3:3: Message type "inference.ModelInput" has no field named "shape".',
        ),
        (
            'parameters { key: "k" value { int_value: 3 } }',
            f'{FILE}:1:31: Message type "inference.ModelParameter" has no field named "int_value".',
        ),
        (
            "max_batch_size: 4\nmax_batch_size: 8",
            f'{FILE}:2:17: Message type "inference.ModelConfig" should not have multiple '
            '"max_batch_size" fields.',
        ),
        (
            "input { data_type: TYPE_FLOAT }",
            f"{FILE}:1:20: 'input {{ data_type: TYPE_FLOAT }}': "
            'Enum type "inference.DataType" has no value named TYPE_FLOAT.',
        ),
    ],
)
def test_text_format_errors_keep_line_and_column(text: str, message: str) -> None:
    assert refusal(text) == message


ONE_INPUT = 'output { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } '


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batch_size: -1", "max_batch_size: must be >= 0, not -1"),
        ('name: "resnet50"', "name: 'resnet50' differs from the folder name 'resnet'"),
        (
            'platform: "tensorflow_savedmodel"',
            "platform: 'tensorflow_savedmodel' is not served here (known: onnxruntime_onnx, "
            "pytorch_libtorch, torch_aoti, torch_export, pytorch_eager)",
        ),
        (
            'backend: "python"',
            "backend: 'python' is not served here (known: onnxruntime, pytorch, torch_aoti, "
            "torch_export, pytorch_eager)",
        ),
        (
            'platform: "onnxruntime_onnx" backend: "pytorch"',
            "backend: 'pytorch' disagrees with platform 'onnxruntime_onnx'",
        ),
        ("input { data_type: TYPE_FP32 dims: [ 1 ] }", "input[0].name: is missing"),
        (
            'input { name: "x" data_type: TYPE_FP32 } input { name: "x" data_type: TYPE_FP32 }',
            "input[1].name: 'x' is used by another input",
        ),
        ('output { name: "y" dims: [ 1 ] }', "output[0].data_type: is missing"),
        (
            'input { name: "x" data_type: TYPE_BF16 }',
            "input[0].data_type: TYPE_BF16 is not supported by this server",
        ),
        ('input { name: "x" data_type: 99 }', "input[0].data_type: 99 is not a DataType"),
        (
            'input { name: "x" data_type: TYPE_FP32 dims: [ 3, 0 ] }',
            "input[0].dims: must each be >= 1, or -1 for any size, not 0",
        ),
        (
            ONE_INPUT + 'output { name: "z" data_type: TYPE_FP32 dims: [ -2 ] }',
            "output[1].dims: must each be >= 1, or -1 for any size, not -2",
        ),
        (
            'input { name: "x" data_type: TYPE_FP32 dims: [ 4 ] reshape { shape: [ 2, 2 ] } }',
            "input[0].reshape: not supported by this server",
        ),
        (
            'input { name: "x" data_type: TYPE_INT32 is_shape_tensor: true }',
            "input[0].is_shape_tensor: not supported by this server",
        ),
        (
            "max_batch_size: 8 dynamic_batching { preferred_batch_size: [ 4, 16 ] }",
            "dynamic_batching.preferred_batch_size: 16 is not between 1 and max_batch_size (8)",
        ),
        (
            "dynamic_batching { preferred_batch_size: [ 1 ] }",
            "dynamic_batching.preferred_batch_size: 1 is not between 1 and max_batch_size (0)",
        ),
        (
            "max_batch_size: 8 dynamic_batching { priority_levels: 2 }",
            "dynamic_batching.priority_levels: priorities are not supported by this server",
        ),
        (
            "max_batch_size: 8 dynamic_batching { default_queue_policy "
            "{ default_timeout_microseconds: 1000 } }",
            "dynamic_batching.default_queue_policy: queue timeouts are not supported by this "
            "server: clients set a deadline instead",
        ),
        (
            "model_transaction_policy { decoupled: true }",
            "model_transaction_policy.decoupled: decoupled models are not supported",
        ),
        (
            'model_repository_agents { agents [ { name: "checksum" } ] }',
            "model_repository_agents: repository agents are not supported by this server",
        ),
        (
            "response_cache { enable: true }",
            "response_cache: the response cache is not supported by this server",
        ),
        (
            "instance_group [ { count: 1 }, { count: 2 passive: true } ]",
            "instance_group[1].passive: passive instances are not supported",
        ),
        ("sequence_batching { }", "sequence_batching: not supported by this server"),
        ("ensemble_scheduling { }", "ensemble_scheduling: not supported by this server"),
        ('batch_input { target_name: "n" }', "batch_input: not supported by this server"),
        (
            "instance_group { kind: KIND_GPU count: 1 }",
            "instance_group[0].kind: KIND_GPU is not supported: models run on CPU here "
            "(KIND_CPU or KIND_AUTO)",
        ),
        (
            "instance_group { kind: KIND_CPU } instance_group { kind: KIND_MODEL }",
            "instance_group[1].kind: KIND_MODEL is not supported: models run on CPU here "
            "(KIND_CPU or KIND_AUTO)",
        ),
        ("instance_group { gpus: [ 0 ] }", "instance_group[0].gpus: this server has no GPU"),
        ("instance_group { count: -2 }", "instance_group[0].count: must be >= 1, not -2"),
        (
            "version_policy { latest { num_versions: 0 } }",
            "version_policy.latest.num_versions: must be >= 1, not 0",
        ),
        ("version_policy { specific { } }", "version_policy.specific.versions: lists no versions"),
        (
            "version_policy { specific { versions: [ 2, 0 ] } }",
            "version_policy.specific.versions: must be >= 1, not 0",
        ),
        (
            "version_policy { specific { versions: [ 2, 3, 2 ] } }",
            "version_policy.specific.versions: 2 is listed twice",
        ),
        (
            'output { name: "y" data_type: TYPE_FP32 label_filename: "../labels.txt" }',
            "output[0].label_filename: '../labels.txt' contains a path separator",
        ),
        (
            'output { name: "y" data_type: TYPE_FP32 label_filename: ".labels" }',
            "output[0].label_filename: '.labels' starts with a dot",
        ),
        (
            'platform: "onnxruntime_onnx" default_model_filename: "/etc/passwd"',
            "default_model_filename: '/etc/passwd' contains a path separator",
        ),
        (
            'default_model_filename: "weights.bin"',
            "default_model_filename: 'weights.bin' doesn't tell the backend (.onnx, .pt, .pt2): "
            "set platform or backend",
        ),
        ('parameters { key: "" value { string_value: "x" } }', "parameters: a key is empty"),
    ],
)
def test_semantic_errors_name_the_file_and_the_field(text: str, message: str) -> None:
    assert refusal(text) == f"{FILE}: {message}"


def test_the_error_carries_file_and_field() -> None:
    with pytest.raises(RepositoryError) as caught:
        parse("max_batch_size: -1")
    error = caught.value
    assert (error.file, error.field, error.reason) == (
        FILE,
        "max_batch_size",
        "must be >= 0, not -1",
    )
    assert error.status_code.name == "FAILED_PRECONDITION"
