"""Bidirectional streams with backpressure both ways, shared by every streaming API.

Items are answered concurrently and each answer is written as soon as it is ready. Reading stops
while the model's queue is full (an item is read only once the one before it holds its place in
the queue), so HTTP/2 flow control slows a fast client down instead of its items failing. A slot
of the stream's window is freed only once its answer has been written, so a client that doesn't
read its answers holds at most ``STREAM_WINDOW`` of them in the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from serve.batching import Call
from serve.services.status import Context, deadline_of

__all__ = ["STREAM_WINDOW", "serve_stream"]

STREAM_WINDOW = 64

Item = TypeVar("Item")
Answer = TypeVar("Answer")


async def serve_stream(
    items: AsyncIterator[Item],
    context: Context,
    answer: Callable[[Item, Call], Awaitable[Answer]],
) -> None:
    """Answers every item of ``items`` with ``answer``, which must report an item's failure in
    its answer rather than raise: one bad item never ends the stream."""
    window = asyncio.Semaphore(STREAM_WINDOW)
    answers: asyncio.Queue[Answer | None] = asyncio.Queue()
    deadline = deadline_of(context)

    async def answer_one(item: Item, call: Call) -> None:
        await answers.put(await answer(item, call))

    async def read_all() -> None:
        async with asyncio.TaskGroup() as group:
            async for item in items:
                await window.acquire()
                admitted = asyncio.Event()
                call = Call(deadline, wait_for_room=True, admitted=admitted)
                task = group.create_task(answer_one(item, call))
                await _either(admitted, task)
        await answers.put(None)

    reader = asyncio.create_task(read_all())
    try:
        while (response := await answers.get()) is not None:
            await context.write(response)
            window.release()
        await reader
    finally:
        reader.cancel()


async def _either(admitted: asyncio.Event, task: asyncio.Task[None]) -> None:
    """Returns once the item holds its place in the queue, or is already done (or failed)."""
    if admitted.is_set() or task.done():
        return
    waiter = asyncio.create_task(admitted.wait())
    try:
        await asyncio.wait([waiter, task], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
