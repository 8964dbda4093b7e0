"""ModelStatistics through tritonclient: counts that grow by exactly what was sent."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient
from lite0 import CAT_JPG, COFFEE_JPG, MODEL
from tritonclient.grpc import service_pb2


def statistics(client: grpcclient.InferenceServerClient) -> service_pb2.ModelStatistics:
    (stats,) = client.get_inference_statistics(MODEL).model_stats
    assert (stats.name, stats.version) == (MODEL, "1")
    return stats


def test_statistics_count_what_was_sent(client: grpcclient.InferenceServerClient) -> None:
    before = statistics(client)
    # Three requests of one image, one of two: four requests, five inferences.
    for photo in (CAT_JPG, COFFEE_JPG, CAT_JPG):
        image = grpcclient.InferInput("image", [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[photo.data]], dtype=object))
        client.infer(MODEL, [image])
    pair = np.concatenate([CAT_JPG.tensor(), COFFEE_JPG.tensor()])
    tensor = grpcclient.InferInput("input", [2, 3, 224, 224], "FP32")
    tensor.set_data_from_numpy(pair)
    client.infer(MODEL, [tensor])
    after = statistics(client)

    def grew(field: str) -> int:
        return int(_value(after, field) - _value(before, field))

    assert grew("inference_stats.success.count") == 4
    assert grew("inference_count") == 5
    assert grew("inference_stats.queue.count") == 4
    assert grew("inference_stats.fail.count") == 0
    # One request at a time: each ran in its own batch.
    assert grew("execution_count") == 4
    for stage in ("compute_input", "compute_infer", "compute_output"):
        assert grew(f"inference_stats.{stage}.count") == 4
    assert grew("inference_stats.success.ns") > 0
    assert grew("inference_stats.compute_infer.ns") > 0
    # Milliseconds since the epoch, of the last request.
    assert after.last_inference > max(before.last_inference, 1_700_000_000_000)
    sizes = {batch.batch_size: batch for batch in after.batch_stats}
    assert {1, 2} <= set(sizes)
    assert sizes[2].compute_infer.count >= 1
    assert all(batch.compute_infer.ns > 0 for batch in after.batch_stats)


def _value(message: object, path: str) -> int:
    for part in path.split("."):
        message = getattr(message, part)
    assert isinstance(message, int)
    return message
