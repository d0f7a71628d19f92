"""A ticker for tests that a piece of work gives the event loop turns (the packet readers
run in those turns in the daemon)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def ticking(events: list[str]) -> AsyncIterator[None]:
    """Append "tick" to ``events`` at every turn of the loop while the block runs."""
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            events.append("tick")
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    try:
        yield
    finally:
        done.set()
        await task
