"""The n choices of one OpenAI request, each its own backend request, as one event stream.

Hand-written: an asyncio merge of async iterators that keeps the gateway's cancellation
contract (router/backend.py) for every one of them: closing the merged stream cancels each
pending read and closes each backend iterator, so every choice is aborted upstream. One
choice's error ends the whole stream (the others are aborted)."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio

_END = object()


async def merge(its: list[AsyncIterator]) -> AsyncIterator[tuple[int, Any]]:
    """(choice index, event) as they come; each iterator's own order is kept."""
    if len(its) == 1:
        try:
            async for ev in its[0]:
                yield 0, ev
        finally:
            await _close(its[0])
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, it: AsyncIterator) -> None:
        try:
            async for ev in it:
                await queue.put((i, ev))
            await queue.put((i, _END))
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - handed to the reader
            await queue.put((i, e))

    tasks = [asyncio.ensure_future(pump(i, it)) for i, it in enumerate(its)]
    live = len(its)
    try:
        while live:
            i, ev = await queue.get()
            if ev is _END:
                live -= 1
            elif isinstance(ev, BaseException):
                raise ev
            else:
                yield i, ev
    finally:
        with anyio.CancelScope(shield=True):
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for it in its:
                await _close(it)


async def _close(it: AsyncIterator) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        with anyio.CancelScope(shield=True), contextlib.suppress(RuntimeError):
            await close()
