"""The tutorial's server design, re-implemented faithfully as the baseline to beat.

As in the tutorial: a grpc.aio server whose `inference` handler decodes the images with Pillow,
applies torchvision transforms (resize to 224x224, to tensor, normalise) and runs the eager PyTorch
model inside the coroutine, blocking the event loop; no batching across requests, no executor.
Only the model differs from the tutorial's ResNet34 when asked: it is the same model and the same
pre-processing that torchgrpc serves, so the two are compared on equal work.

    python -m benchmarks.tutorial_server --model efficientnet_lite0 --port 50052
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import torch
from PIL import Image
from torchvision import transforms as T

from benchmarks import reference_server
from export.manifest import EXPORTED_VERSION, WEIGHTS_NAME
from export.zoo import get_spec
from serve.pb import inference_pb2, inference_pb2_grpc
from serve.provenance import check_export


class InferenceService(inference_pb2_grpc.InferenceServerServicer):  # type: ignore[misc]
    def __init__(self, model_name: str, repository: Path) -> None:
        folder = repository / model_name
        check_export(folder, model_name)  # the export torchgrpc would serve, or a clear error
        state = torch.load(folder / EXPORTED_VERSION / WEIGHTS_NAME, weights_only=True)
        spec = get_spec(model_name)
        self.model = spec.build_with(state)
        # What the export wrote into config.pbtxt, so both servers do the same work.
        pre = spec.preprocessing
        self.transforms = T.Compose(
            [
                T.Resize((pre.height, pre.width)),
                T.ToTensor(),
                T.Normalize([m / 255 for m in pre.mean], [s / 255 for s in pre.std]),
            ]
        )

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transforms(image.convert("RGB")) for image in images])

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> list[int]:
        predictions: list[int] = self.model(x).argmax(dim=1).tolist()
        return predictions

    async def inference(
        self, request: inference_pb2.InferenceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> inference_pb2.InferenceReply:
        images = [Image.open(io.BytesIO(data)) for data in request.image]
        return inference_pb2.InferenceReply(pred=self.predict(self.preprocess(images)))


def main() -> None:
    args = reference_server.parser(__doc__.splitlines()[0], default_port=50052).parse_args()
    reference_server.run(args, InferenceService(args.model, args.artifacts))


if __name__ == "__main__":
    main()
