"""The image front: encoded images in, the model's image tensor out.

Decoding and pre-processing run off the event loop. Every image's header is read first and the
request's pixels are counted against its budget before a single image is decoded; an image is not
decoded once the request's deadline has passed. Each decoded image is written straight into its
row of the batch tensor, so nothing is stacked or copied afterwards.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import Executor

import numpy as np
from PIL import Image

from export.manifest import Preprocessing
from serve.errors import DeadlineExpired, InvalidArgument
from serve.imaging import ImageLimits, check_request_pixels, decode_opened, open_image
from serve.tensors import BYTES, VARIABLE, TensorSpec

__all__ = ["ImageFront", "ImageWork"]


class ImageFront:
    """Feeds the model input ``tensor`` (float32 N x 3 x H x W, or N x H x W x 3) from encoded
    images."""

    def __init__(
        self,
        tensor: str,
        preprocessing: Preprocessing,
        limits: ImageLimits,
        pool: Executor,
        max_images: int,
        name: str = "image",
    ) -> None:
        self.tensor = tensor
        # The BYTES input a KServe request sends encoded images in, one per row.
        self.spec = TensorSpec(name, BYTES, (VARIABLE, 1))
        self.preprocessing = preprocessing
        self.limits = limits
        self.max_images = max_images
        self.pool = pool

    def work(self, images: Sequence[bytes], deadline: float | None) -> ImageWork:
        """Checks what can be checked without touching an image's bytes, and returns the work."""
        if not images:
            raise InvalidArgument("the request has no images")
        if len(images) > self.max_images:
            raise InvalidArgument(
                f"the request has {len(images)} images, more than max_images_per_request "
                f"({self.max_images}): split it"
            )
        return ImageWork(self, images, deadline)


class ImageWork:
    """One request's images: ``batching.Work`` that decodes them when the batcher asks."""

    def __init__(self, front: ImageFront, images: Sequence[bytes], deadline: float | None) -> None:
        self._front = front
        self._images = images
        self._deadline = deadline
        self.rows = len(images)

    def make(self) -> dict[str, np.ndarray]:
        out = self._batch()
        for index, image in enumerate(self._open_all()):
            self._decode_into(out, index, image)
        return {self._front.tensor: out}

    async def make_async(self) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        pool = self._front.pool
        if self.rows == 1:
            return await loop.run_in_executor(pool, self.make)
        opened = await loop.run_in_executor(pool, self._open_all)
        out = self._batch()
        await asyncio.gather(
            *(
                loop.run_in_executor(pool, self._decode_into, out, index, image)
                for index, image in enumerate(opened)
            )
        )
        return {self._front.tensor: out}

    def _batch(self) -> np.ndarray:
        pre = self._front.preprocessing
        return np.empty((self.rows, *pre.output_shape), dtype=np.float32)

    def _open_all(self) -> list[Image.Image]:
        """Every header, read and checked; then the request's pixels against its budget."""
        limits = self._front.limits
        opened = [open_image(data, index, limits) for index, data in enumerate(self._images)]
        check_request_pixels(opened, limits.max_request_pixels)
        return opened

    def _decode_into(self, out: np.ndarray, index: int, image: Image.Image) -> None:
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise DeadlineExpired("deadline exceeded before the images were decoded")
        pre = self._front.preprocessing
        rgb = decode_opened(image, index, self._front.limits, pre.draft_size)
        out[index] = pre.apply(rgb)
