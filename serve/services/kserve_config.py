"""The ModelConfig RPC's answer: a served version's effective configuration.

It starts from the model's config.pbtxt as written (parameters, preferred batch sizes and the
rest carry over) and states what the server made of it: the platform that runs, the inputs and
outputs the APIs take (the image front's BYTES input and ``probabilities`` included), the batch
size, instances and queue settings in force.
"""

from __future__ import annotations

from collections.abc import Sequence

from serve.models import ServedModel
from serve.pb.kserve import model_config_pb2 as config_pb
from serve.tensors import BYTES, DATATYPES, TensorSpec

__all__ = ["effective_config"]

# The protocol's datatype names to ModelConfig's DataType enum (BYTES is TYPE_STRING there).
_CONFIG_TYPES = {name: f"TYPE_{'STRING' if name == BYTES else name}" for name in DATATYPES}


def effective_config(model: ServedModel) -> config_pb.ModelConfig:
    config = config_pb.ModelConfig()
    if model.settings.config is not None:
        config.CopyFrom(model.settings.config)
    signature = model.signature
    batching = signature.max_batch_size > 0
    # An image model takes its images or its tensor: either input alone.
    alternatives = model.image is not None
    labels = model.fronts.labelled
    label_files = model.settings.label_files
    config.name = model.name
    config.platform = model.platform
    config.backend = ""
    config.max_batch_size = signature.max_batch_size
    del config.input[:]
    config.input.extend(
        config_pb.ModelInput(
            name=spec.name,
            data_type=_CONFIG_TYPES[spec.datatype],
            dims=_dims(spec, batching),
            optional=alternatives,
        )
        for spec in signature.inputs
    )
    del config.output[:]
    config.output.extend(
        config_pb.ModelOutput(
            name=spec.name,
            data_type=_CONFIG_TYPES[spec.datatype],
            dims=_dims(spec, batching),
            label_filename=(
                label_files.get(labels[spec.name].source, "") if spec.name in labels else ""
            ),
        )
        for spec in signature.outputs
    )
    del config.instance_group[:]
    config.instance_group.append(
        config_pb.ModelInstanceGroup(
            name=model.info.backend,
            count=model.instances,
            kind=config_pb.ModelInstanceGroup.Kind.KIND_CPU,
        )
    )
    batcher = model.batcher.config
    dynamic = config.dynamic_batching
    dynamic.max_queue_delay_microseconds = round(batcher.max_queue_delay * 1e6)
    # A stream's answers come in its requests' order.
    dynamic.preserve_ordering = True
    dynamic.default_queue_policy.max_queue_size = batcher.max_queue_size
    config.model_transaction_policy.decoupled = False
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    return config


def _dims(spec: TensorSpec, batching: bool) -> Sequence[int]:
    """Triton's config dims leave out the batch axis of a batching model."""
    return spec.shape[1:] if batching else spec.shape
