"""Small asyncio helpers shared by the long-running loops."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("mahavishnu")

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


async def stop_loops(*loops: asyncio.Task[None], timeout: float = 5.0) -> None:
    """Wait for loops already told to stop (by their own event or flag) to end; cancel any that
    does not end within `timeout` (see `stop_task` for why cancelling comes last)."""
    _, late = await asyncio.wait(loops, timeout=timeout)
    for loop_task in late:
        log.warning("%s loop did not stop in time: cancelling it", loop_task.get_name())
        loop_task.cancel()
    if late:
        await asyncio.wait(late, timeout=timeout)
    for loop_task in loops:
        if loop_task.done() and not loop_task.cancelled() and loop_task.exception() is not None:
            log.error("%s loop failed: %r", loop_task.get_name(), loop_task.exception())
