"""Small asyncio helpers shared by the long-running loops."""

from __future__ import annotations

import asyncio
from typing import Any

STOP_WAIT = 7.0  # seconds a stopped loop gets: above the longest BLOCK of a client reader


async def wait_any(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Wait until any of the events is set, or the timeout passes."""
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def stop_task(task: asyncio.Task[Any] | None, timeout: float = STOP_WAIT) -> None:
    """Cancel a background loop and wait for it to end, at most `timeout` seconds.

    Cancelling is not enough on its own: redis-py (8.1, Python 3.11) can swallow a cancel that
    lands inside a command, and the loop then runs on. Every loop that talks to Redis also
    checks a stop flag of its own, so a swallowed cancel ends it at its next round.
    """
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.wait({task}, timeout=timeout)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: a loop that failed while stopping is not reported twice
