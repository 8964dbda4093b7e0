"""What perf_analyzer (``--service-kind=triton``, gRPC) asks of the server, call for call.

perf_analyzer can't be installed here (its wheel needs a newer glibc), so this follows its sources
(triton-inference-server/perf_analyzer ``src/perf_analyzer.cc``, ``model_parser.cc``,
``client_backend/triton/triton_client_backend.cc``, ``data_loader.cc``,
``infer_data_manager.cc``, ``inference_profiler.cc``) with tritonclient's generated stubs:

1. ``ModelMetadata`` and ``ModelConfig``, each turned into JSON with ``preserve_proto_field_names``
   and ``always_print_fields_with_no_presence`` and read with rapidjson: ``max_batch_size``, the
   ``input``/``output`` lists (every config tensor must have metadata; the first metadata dim is
   dropped when ``max_batch_size > 0``), ``optional``, ``is_shape_tensor``, ``platform``
   ("ensemble"?), ``sequence_batching``/``dynamic_batching`` and
   ``model_transaction_policy.decoupled`` (``GetBool()`` on it: it must be there when the policy
   is).
2. ``ServerMetadata``: server statistics are read only when ``extensions`` has "statistics".
3. ``ModelStatistics`` (name, version "") before and after each measurement window. With no
   ``-x`` version, the model's version is the one whose ``queue.count`` grew, parsed with
   ``std::stoll``; the compute_input/infer/output counts that grew must be equal.
4. ``ModelInfer`` at batch 1 with every input it has data for. With its default data
   (``--input-data random``, or ``zero``) it generates data for EVERY input, optional or not:
   random 128-character strings for BYTES, random (or zero) bytes for the rest. Optional inputs
   are left out only when a ``--input-data`` JSON file gives them no data.
"""

from __future__ import annotations

import json
import queue
import random
import string
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import json_format
from google.protobuf.message import Message
from lite0 import MODEL
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

Json = dict[str, Any]
# perf_analyzer's --string-length default.
STRING_LENGTH = 128


def as_perf_analyzer_json(message: Message) -> Json:
    """MessageToJsonString with perf_analyzer's options, parsed back (int64s stay strings)."""
    text = json_format.MessageToJson(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    parsed: Json = json.loads(text)
    return parsed


def get_int(value: object) -> int:
    """ModelParser::GetInt: a JSON number, or a string (protobuf's JSON form of an int64)."""
    if isinstance(value, str):
        return int(value)
    assert isinstance(value, int) and not isinstance(value, bool)
    return value


def parse_model(metadata: Json, config: Json) -> Json:
    """ModelParser::InitTriton, keeping what it would fail on as assertions."""
    max_batch_size = get_int(config.get("max_batch_size", 0))
    decoupled = False
    if "model_transaction_policy" in config:
        decoupled = config["model_transaction_policy"]["decoupled"]
        assert isinstance(decoupled, bool)
    inputs: dict[str, Json] = {}
    for tensor in metadata["inputs"]:
        dims = [get_int(d) for d in tensor["shape"]]
        shape = dims[1:] if max_batch_size > 0 else dims
        inputs[tensor["name"]] = {"datatype": tensor["datatype"], "shape": shape}
    for tensor in config["input"]:
        assert tensor["name"] in inputs, f"no metadata found for input tensor {tensor['name']}"
        inputs[tensor["name"]]["shape_tensor"] = tensor["is_shape_tensor"]
        inputs[tensor["name"]]["optional"] = tensor["optional"]
    outputs: dict[str, Json] = {}
    for tensor in metadata["outputs"]:
        dims = [get_int(d) for d in tensor["shape"]]
        outputs[tensor["name"]] = {"datatype": tensor["datatype"], "shape": dims[1:]}
    for tensor in config["output"]:
        assert tensor["name"] in outputs, f"no metadata found for output tensor {tensor['name']}"
    if "sequence_batching" in config:
        scheduler = "SEQUENCE"
    elif "dynamic_batching" in config:
        scheduler = "DYNAMIC"
    else:
        scheduler = "NONE"
    return {
        "max_batch_size": max_batch_size,
        "decoupled": decoupled,
        "ensemble": config.get("platform") == "ensemble",
        "scheduler": scheduler,
        "response_cache": "response_cache" in config,
        # std::map: inputs in name order.
        "inputs": dict(sorted(inputs.items())),
        "outputs": dict(sorted(outputs.items())),
    }


@pytest.fixture(scope="module")
def model(client: grpcclient.InferenceServerClient) -> Json:
    """perf_analyzer's start-up: ModelMetadata, then ModelConfig, for version "" (no -x)."""
    metadata = as_perf_analyzer_json(client.get_model_metadata(MODEL, ""))
    config = as_perf_analyzer_json(client.get_model_config(MODEL, ""))["config"]
    assert metadata["name"] == MODEL
    return parse_model(metadata, config)


def test_start_up(client: grpcclient.InferenceServerClient, model: Json) -> None:
    assert model == {
        "max_batch_size": 16,
        "decoupled": False,
        "ensemble": False,
        "scheduler": "DYNAMIC",
        "response_cache": False,
        "inputs": {
            "image": {"datatype": "BYTES", "shape": [1], "shape_tensor": False, "optional": True},
            "input": {
                "datatype": "FP32",
                "shape": [3, 224, 224],
                "shape_tensor": False,
                "optional": True,
            },
        },
        "outputs": {"probabilities": {"datatype": "FP32", "shape": [1000]}},
    }
    # InferenceProfiler: server-side statistics only with the "statistics" extension.
    assert "statistics" in client.get_server_metadata().extensions
    # tritonclient's own as_json (no always_print) leaves out fields at their defaults: a Python
    # tool reading the config that way must not index model_transaction_policy["decoupled"].
    assert client.get_model_config(MODEL, as_json=True)["config"]["model_transaction_policy"] == {}


def generated_inputs(model: Json, rng: random.Random) -> list[grpcclient.InferInput]:
    """DataLoader::GenerateData at batch 1: data for every input, optional ones included."""
    inputs = []
    for name, spec in model["inputs"].items():
        shape = [1, *spec["shape"]]
        tensor = grpcclient.InferInput(name, shape, spec["datatype"])
        if spec["datatype"] == "BYTES":
            text = "".join(rng.choices(string.ascii_letters + string.digits, k=STRING_LENGTH))
            tensor.set_data_from_numpy(np.full(shape, text.encode(), dtype=object))
        else:
            dtype = triton_to_np_dtype(spec["datatype"])
            tensor.set_data_from_numpy(np.zeros(shape, dtype=dtype))
        inputs.append(tensor)
    return inputs


def test_generated_data(client: grpcclient.InferenceServerClient, model: Json) -> None:
    inputs = generated_inputs(model, random.Random(0))
    assert [t.name() for t in inputs] == ["image", "input"]
    outputs = [grpcclient.InferRequestedOutput(name) for name in model["outputs"]]
    result = client.infer(MODEL, inputs, outputs=outputs)
    assert result.as_numpy("probabilities").shape == (1, 1000)


def json_data_inputs(model: Json, data: Mapping[str, np.ndarray]) -> list[grpcclient.InferInput]:
    """--input-data FILE.json naming only some optional inputs: the others are left out."""
    inputs = []
    for name, spec in model["inputs"].items():
        if name not in data:
            assert spec["optional"], f"missing tensor {name}"
            continue
        tensor = grpcclient.InferInput(name, [1, *spec["shape"]], spec["datatype"])
        tensor.set_data_from_numpy(data[name])
        inputs.append(tensor)
    return inputs


def stats_by_id(client: grpcclient.InferenceServerClient) -> dict[tuple[str, str], Json]:
    """TritonClientBackend::ParseStatistics: the counts by (name, version)."""
    response = client.get_inference_statistics(MODEL, "")
    by_id = {}
    for stats in response.model_stats:
        inference = stats.inference_stats
        by_id[(stats.name, stats.version)] = {
            "inference_count": stats.inference_count,
            "execution_count": stats.execution_count,
            "success_count": inference.success.count,
            "queue_count": inference.queue.count,
            "compute_input_count": inference.compute_input.count,
            "compute_infer_count": inference.compute_infer.count,
            "compute_output_count": inference.compute_output.count,
            "cumm_time_ns": inference.success.ns,
            "compute_infer_time_ns": inference.compute_infer.ns,
            "cache_hit_count": inference.cache_hit.count,
        }
    return by_id


def test_measurement_window(client: grpcclient.InferenceServerClient, model: Json) -> None:
    """A window of async requests with JSON input data for 'input' alone, as perf_analyzer
    measures it from the statistics before and after."""
    requests = 6
    start = stats_by_id(client)
    inputs = json_data_inputs(model, {"input": np.zeros((1, 3, 224, 224), np.float32)})
    assert [t.name() for t in inputs] == ["input"]
    outputs = [grpcclient.InferRequestedOutput(name) for name in model["outputs"]]
    answers: queue.Queue[InferenceServerException | None] = queue.Queue()
    for _ in range(requests):
        client.async_infer(MODEL, inputs, lambda result, error: answers.put(error), outputs=outputs)
    assert [answers.get(timeout=60) for _ in range(requests)] == [None] * requests
    end = stats_by_id(client)

    # InferenceProfiler::DetermineStatsModelVersion: no -x, so the version whose queue count
    # grew, read with std::stoll.
    grown = [
        int(version)
        for (name, version), counts in end.items()
        if name == MODEL
        and counts["queue_count"] > start.get((name, version), {}).get("queue_count", 0)
    ]
    assert grown == [1]
    before, after = start[(MODEL, "1")], end[(MODEL, "1")]
    delta = {key: after[key] - before[key] for key in after}
    assert all(value >= 0 for value in delta.values()), delta
    assert delta["success_count"] == requests
    assert delta["queue_count"] == requests
    assert delta["inference_count"] == requests
    assert 1 <= delta["execution_count"] <= requests
    # "Server side statistics compute counts must be the same."
    assert delta["compute_input_count"] == delta["compute_infer_count"]
    assert delta["compute_infer_count"] == delta["compute_output_count"]
    # As Triton counts them: one per request, whatever the batches.
    assert delta["compute_infer_count"] == requests
    assert delta["cumm_time_ns"] > 0 and delta["compute_infer_time_ns"] > 0
    assert delta["cache_hit_count"] == 0
