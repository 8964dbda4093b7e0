"""config.pbtxt: Triton's ModelConfig in protobuf text format, parsed strictly and checked.

Unknown fields are errors (with the line and column text_format reports). Every other refusal
names the field, in the form ``input[1].dims``. What Triton has and this server can't honour
(a GPU, sequence or ensemble scheduling, reshapes, shape tensors, ragged batches, priorities,
queue timeouts, decoupled models, repository agents, the response cache, passive instances) is
refused rather than ignored, so a model never runs with semantics its config didn't ask for.
Hints that only tune performance in Triton (preferred_batch_size, optimization, model_warmup,
rate_limiter, host_policy) are accepted and have no effect here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from google.protobuf import text_format

from serve.errors import RepositoryError, shortened
from serve.pb.kserve import model_config_pb2 as config_pb
from serve.repository.names import name_problem
from serve.repository.settings import BACKEND_FIELDS, PLATFORMS, SUFFIX_BACKENDS, ModelSettings
from serve.repository.versions import VersionPolicy
from serve.tensors import BYTES, DATATYPES, VARIABLE, TensorSpec

__all__ = ["parse_config"]

Fail = Callable[[str, str], NoReturn]

_CPU_KINDS = (
    config_pb.ModelInstanceGroup.Kind.KIND_AUTO,
    config_pb.ModelInstanceGroup.Kind.KIND_CPU,
)
# Flags of ModelInput / ModelOutput this server has no implementation for.
_UNSUPPORTED_TENSOR_FLAGS = ("is_shape_tensor", "allow_ragged_batch", "is_non_linear_format_io")


def parse_config(text: str, file: str, folder_name: str) -> ModelSettings:
    """The settings of the model in folder ``folder_name`` from its config.pbtxt's ``text``.

    ``file`` is how messages name the file. Empty text is a valid, empty config: the backend
    then comes from the model file and the inputs and outputs too (``complete_from_model``).
    Raises RepositoryError naming ``file`` and the field.
    """
    config = _parse(text, file)

    def fail(field: str, reason: str) -> NoReturn:
        raise RepositoryError(file, reason, field)

    if config.name and config.name != folder_name:
        fail("name", f"{shortened(config.name)} differs from the folder name {folder_name!r}")
    max_batch_size = int(config.max_batch_size)
    if max_batch_size < 0:
        fail("max_batch_size", f"must be >= 0, not {max_batch_size}")
    _refuse_unsupported(config, fail)
    batching = max_batch_size > 0
    inputs = _tensors("input", config.input, batching, fail)
    outputs = _tensors("output", config.output, batching, fail)
    batcher = config.dynamic_batching
    default_model_filename = _file_name(
        str(config.default_model_filename), "default_model_filename", fail
    )
    return ModelSettings(
        name=folder_name,
        backend=_backend(config, default_model_filename, fail),
        max_batch_size=max_batch_size,
        inputs=inputs,
        outputs=outputs,
        complete_from_model=not inputs or not outputs,
        instances=_instances(config.instance_group, fail),
        dynamic_batching=config.HasField("dynamic_batching"),
        max_queue_delay=int(batcher.max_queue_delay_microseconds) / 1e6,
        preferred_batch_sizes=_preferred_sizes(batcher, max_batch_size, fail),
        max_queue_size=int(batcher.default_queue_policy.max_queue_size),
        version_policy=_version_policy(config.version_policy, fail),
        label_files={
            str(output.name): _file_name(
                str(output.label_filename), f"output[{index}].label_filename", fail
            )
            for index, output in enumerate(config.output)
            if output.label_filename
        },
        parameters=_parameters(config.parameters, fail),
        default_model_filename=default_model_filename,
        config=config,
    )


def _parse(text: str, file: str) -> Any:
    config = config_pb.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        line, column = error.GetLine(), error.GetColumn()
        if line is None:
            raise RepositoryError(file, str(error)) from None
        message = str(error).removeprefix(f"{line}:{column} : ")
        raise RepositoryError(f"{file}:{line}:{column}", message) from None
    return config


def _backend(config: Any, default_model_filename: str, fail: Fail) -> str | None:
    platform, backend = str(config.platform), str(config.backend)
    by_platform = _known(platform, PLATFORMS, "platform", fail)
    by_backend = _known(backend, BACKEND_FIELDS, "backend", fail)
    # Triton pairs platform torch_aoti with backend pytorch (which alone means TorchScript).
    if platform == "torch_aoti" and backend == "pytorch":
        by_backend = by_platform
    if by_platform and by_backend and by_platform != by_backend:
        fail("backend", f"{backend!r} disagrees with platform {platform!r}")
    chosen = by_platform or by_backend
    if chosen is None and default_model_filename:
        suffix = "." + default_model_filename.rpartition(".")[2]
        chosen = SUFFIX_BACKENDS.get(suffix)
        if chosen is None:
            fail(
                "default_model_filename",
                f"{default_model_filename!r} doesn't tell the backend "
                f"({', '.join(SUFFIX_BACKENDS)}): set platform or backend",
            )
    return chosen


def _known(value: str, table: Mapping[str, str], field: str, fail: Fail) -> str | None:
    if not value:
        return None
    if value not in table:
        fail(field, f"{shortened(value)} is not served here (known: {', '.join(table)})")
    return table[value]


def _refuse_unsupported(config: Any, fail: Fail) -> None:
    scheduling = config.WhichOneof("scheduling_choice")
    if scheduling in ("sequence_batching", "ensemble_scheduling"):
        fail(scheduling, "not supported by this server")
    for field in ("batch_input", "batch_output"):
        if len(getattr(config, field)):
            fail(field, "not supported by this server")
    batcher = config.dynamic_batching
    if batcher.priority_levels or len(batcher.priority_queue_policy):
        fail("dynamic_batching.priority_levels", "priorities are not supported by this server")
    queue = batcher.default_queue_policy
    if queue.default_timeout_microseconds or queue.allow_timeout_override or queue.timeout_action:
        fail(
            "dynamic_batching.default_queue_policy",
            "queue timeouts are not supported by this server: clients set a deadline instead",
        )
    if config.model_transaction_policy.decoupled:
        fail("model_transaction_policy.decoupled", "decoupled models are not supported")
    if len(config.model_repository_agents.agents):
        fail("model_repository_agents", "repository agents are not supported by this server")
    if config.response_cache.enable:
        fail("response_cache", "the response cache is not supported by this server")
    for index, group in enumerate(config.instance_group):
        if group.passive:
            fail(f"instance_group[{index}].passive", "passive instances are not supported")


def _tensors(kind: str, items: Sequence[Any], batching: bool, fail: Fail) -> tuple[TensorSpec, ...]:
    specs: list[TensorSpec] = []
    for index, item in enumerate(items):
        where = f"{kind}[{index}]"
        name = str(item.name)
        if not name:
            fail(f"{where}.name", "is missing")
        if any(spec.name == name for spec in specs):
            fail(f"{where}.name", f"{shortened(name)} is used by another {kind}")
        datatype = _datatype(int(item.data_type), f"{where}.data_type", fail)
        dims = tuple(int(d) for d in item.dims)
        bad = [d for d in dims if d < 1 and d != VARIABLE]
        if bad:
            fail(f"{where}.dims", f"must each be >= 1, or -1 for any size, not {bad[0]}")
        if item.HasField("reshape"):
            fail(f"{where}.reshape", "not supported by this server")
        for flag in _UNSUPPORTED_TENSOR_FLAGS:
            if getattr(item, flag, False):
                fail(f"{where}.{flag}", "not supported by this server")
        specs.append(TensorSpec(name, datatype, ((VARIABLE,) if batching else ()) + dims))
    return tuple(specs)


def _datatype(value: int, field: str, fail: Fail) -> str:
    """Our datatype name (serve.tensors.DATATYPES) for a DataType enum value."""
    if value == config_pb.DataType.TYPE_INVALID:
        fail(field, "is missing")
    try:
        enum_name = str(config_pb.DataType.Name(value))
    except ValueError:
        fail(field, f"{value} is not a DataType")
    name = BYTES if enum_name == "TYPE_STRING" else enum_name.removeprefix("TYPE_")
    if name not in DATATYPES:
        fail(field, f"{enum_name} is not supported by this server")
    return name


def _instances(groups: Sequence[Any], fail: Fail) -> int | None:
    """Instances over all groups (a group's count is 1 when unset); None without any group."""
    if not groups:
        return None
    total = 0
    for index, group in enumerate(groups):
        where = f"instance_group[{index}]"
        kind = int(group.kind)
        if kind not in _CPU_KINDS:
            fail(
                f"{where}.kind",
                f"{_kind_name(kind)} is not supported: models run on CPU here "
                "(KIND_CPU or KIND_AUTO)",
            )
        if len(group.gpus):
            fail(f"{where}.gpus", "this server has no GPU")
        count = int(group.count)
        if count < 0:
            fail(f"{where}.count", f"must be >= 1, not {count}")
        total += count or 1
    return total


def _kind_name(kind: int) -> str:
    try:
        return str(config_pb.ModelInstanceGroup.Kind.Name(kind))
    except ValueError:
        return str(kind)


def _preferred_sizes(batcher: Any, max_batch_size: int, fail: Fail) -> tuple[int, ...]:
    sizes = tuple(int(size) for size in batcher.preferred_batch_size)
    for size in sizes:
        if not 1 <= size <= max_batch_size:
            fail(
                "dynamic_batching.preferred_batch_size",
                f"{size} is not between 1 and max_batch_size ({max_batch_size})",
            )
    return sizes


def _version_policy(policy: Any, fail: Fail) -> VersionPolicy:
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        versions = tuple(int(v) for v in policy.specific.versions)
        field = "version_policy.specific.versions"
        if not versions:
            fail(field, "lists no versions")
        for index, version in enumerate(versions):
            if version < 1:
                fail(field, f"must be >= 1, not {version}")
            if version in versions[:index]:
                fail(field, f"{version} is listed twice")
        return VersionPolicy("specific", versions=versions)
    if choice == "latest":
        count = int(policy.latest.num_versions)
        if count < 1:
            fail("version_policy.latest.num_versions", f"must be >= 1, not {count}")
        return VersionPolicy("latest", num_versions=count)
    return VersionPolicy()


def _file_name(value: str, field: str, fail: Fail) -> str:
    """A file name from the config: one plain name in its folder (serve.repository.names)."""
    if value:
        problem = name_problem(value)
        if problem:
            fail(field, f"{shortened(value)} {problem}")
    return value


def _parameters(parameters: Any, fail: Fail) -> dict[str, str]:
    values = {str(key): str(value.string_value) for key, value in parameters.items()}
    if "" in values:
        fail("parameters", "a key is empty")
    return dict(sorted(values.items()))
