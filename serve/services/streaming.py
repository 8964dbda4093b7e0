"""Bidirectional streams with backpressure both ways, shared by every streaming API.

Items are answered concurrently, each by ``answer``; an item that fails (or was refused before
it could be answered: too large, say) is answered by ``failure``, and the stream goes on.
Reading stops while the model's queue is full (an item is read only once the one before it holds
its place in the queue), so HTTP/2 flow control slows a fast client down instead of its items
failing. A slot of the stream's window is freed only once its answer has been written, so a
client that doesn't read its answers holds at most ``STREAM_WINDOW`` of them in the server.
Answers are written in the items' order (``ordered``, as Triton's streams do) or each as soon as
it is ready.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import grpc

from serve.batching import Call
from serve.errors import TorchgrpcError
from serve.services.metering import item_context, metered, noted_failure
from serve.services.status import Context, cancelled_status, code_of, deadline_of

__all__ = ["STREAM_WINDOW", "Refused", "serve_stream"]

log = logging.getLogger(__name__)

STREAM_WINDOW = 64

Item = TypeVar("Item")
Answer = TypeVar("Answer")


class Refused:
    """An item (or a unary call's request) refused before its handler sees it: ``message`` holds
    what identifies it (its payload dropped), or None."""

    def __init__(self, message: Any, error: TorchgrpcError) -> None:
        self.message = message
        self.error = error


async def serve_stream(
    items: AsyncIterator[Item | Refused],
    context: Context,
    answer: Callable[[Item, Call], Coroutine[object, object, Answer]],
    failure: Callable[[Item, Exception], Answer],
    *,
    ordered: bool,
) -> None:
    """Answers every item of ``items`` with ``answer``, or with ``failure`` when that raises (or
    the item was refused). An exception from ``failure`` ends the stream, and reaches the
    caller."""

    async def answered(item: Item, refusal: TorchgrpcError | None, call: Call) -> Answer:
        try:
            if refusal is not None:
                raise refusal
            return await answer(item, call)
        except Exception as error:
            return failure(item, error)

    window = asyncio.Semaphore(STREAM_WINDOW)
    # Ordered: each item's task, queued as it is read. Unordered: each task, once it is done.
    answers: asyncio.Queue[asyncio.Task[Answer] | None] = asyncio.Queue()
    deadline = deadline_of(context)

    # Not a TaskGroup: one item's failure must not cancel the items before it, whose answers
    # are still to be written.
    running: set[asyncio.Task[Answer]] = set()

    async def read_all() -> None:
        try:
            async for item in items:
                await window.acquire()
                admitted = asyncio.Event()
                call = Call(deadline, wait_for_room=True, admitted=admitted)
                if isinstance(item, Refused):
                    task = _start(answered(item.message, item.error, call), item.message, context)
                else:
                    task = _start(answered(item, None, call), item, context)
                running.add(task)
                task.add_done_callback(running.discard)
                if ordered:
                    answers.put_nowait(task)
                else:
                    task.add_done_callback(answers.put_nowait)
                await _either(admitted, task)
            # Unordered answers are queued as their tasks end: the end comes after the last.
            await asyncio.gather(*running, return_exceptions=True)
        finally:
            # Also when reading fails: the writer then stops, and ``await reader`` raises.
            answers.put_nowait(None)

    reader = asyncio.create_task(read_all())
    try:
        while (task := await answers.get()) is not None:
            response = await task
            try:
                await context.write(response)
            except Exception as error:
                # The call is over (the client cancelled or went away): nothing left to answer.
                log.debug("stream ended while writing: %r", error)
                return
            window.release()
        await reader
    finally:
        for pending in (reader, *running):
            pending.cancel()
        # Retrieves their own failures (if any), so that none is reported twice.
        await asyncio.gather(reader, *running, return_exceptions=True)


def _start(
    answer: Coroutine[object, object, Answer], item: object, context: Context
) -> asyncio.Task[Answer]:
    """The task answering ``item``; an inference request is metered until the task ends."""
    request_metrics = metered(item)
    if request_metrics is None:
        return asyncio.create_task(answer)
    item_vars = item_context()
    task = asyncio.create_task(answer, context=item_vars)
    task.add_done_callback(lambda done: request_metrics.done(_status(done, item_vars, context)))
    return task


def _status(
    task: asyncio.Task[Answer], item_vars: contextvars.Context, context: Context
) -> grpc.StatusCode:
    """How an item's request ended: its answer reports a failure in the item's own context."""
    if task.cancelled():
        return cancelled_status(context)
    error = task.exception()
    if error is not None:
        return code_of(error)
    return noted_failure(item_vars) or grpc.StatusCode.OK


async def _either(admitted: asyncio.Event, task: asyncio.Task[Answer]) -> None:
    """Returns once the item holds its place in the queue, or is already done (or failed)."""
    if admitted.is_set() or task.done():
        return
    waiter = asyncio.create_task(admitted.wait())
    try:
        await asyncio.wait([waiter, task], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
