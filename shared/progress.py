"""Following a task as it moves: queued → routed → running → output chunks → its result.

The steps come from the task's state (`shared/task_state.py`), looked at every `POLL` seconds;
the output comes from the task's progress stream (`Keys.task_progress`, written by the worker:
`worker/progress.py`), read with a blocking XREAD in between, so output shows as it arrives. A
follow ends when `finished` (the caller's wait for the result) is done: the rest of the stream
is read first, so every chunk written before the result comes out, in order.

    async for event in follow_task(pools, task_id, finished):
        print(event.message())
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

from shared.connection import Redis, connect, flatten_read, text
from shared.keys import Keys
from shared.models import FINAL_STATUSES, TaskStatus

POLL = 0.25
"""Seconds between looks at the task's state (and the longest XREAD block)."""
READ_COUNT = 100


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a task: `kind` is queued, routed, running, retrying or output."""

    kind: str
    pool_id: str = ""
    worker_id: str = ""
    attempt: int = 0
    text: str = ""

    def message(self) -> str:
        """One human line for this step (the chunk itself for output)."""
        if self.kind == "output":
            return self.text
        if self.kind == "queued":
            return f"queued on pool {self.pool_id}" if self.pool_id else "queued for routing"
        if self.kind == "routed":
            return f"routed to pool {self.pool_id}"
        if self.kind == "running":
            where = f" on {self.worker_id}" if self.worker_id else ""
            return f"running{where} (attempt {self.attempt})"
        if self.kind == "retrying":
            return f"attempt {self.attempt} failed; retrying"
        return self.kind

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "kind": self.kind,
            "pool_id": self.pool_id or None,
            "worker_id": self.worker_id or None,
            "attempt": self.attempt,
            "text": self.text,
        }


@dataclass
class _State:
    status: str
    home: str
    routed: bool
    worker: str
    attempt: int


async def _read_state(redis: Redis, keys: Keys, task_id: str) -> _State | None:
    lookup = await redis.hmget(keys.task(task_id), ["home", "routed_from", "status", "attempts"])
    if all(v is None for v in lookup):
        return None
    home, routed_from, status, attempts = (text(v) for v in lookup)
    worker = ""
    if home:
        state = await redis.hmget(keys.pool_task(home, task_id), ["status", "worker", "attempts"])
        if any(v is not None for v in state):  # else: the move into the pool is under way
            status, worker, attempts = (text(v) for v in state)
    return _State(status, home, bool(routed_from), worker, int(attempts or 0))


class _Tracker:
    """Turns successive states and stream entries into events, each step once."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str, int]] = set()

    def step(self, kind: str, pool_id: str, attempt: int, worker: str = "") -> list[ProgressEvent]:
        key = (kind, pool_id if kind != "running" else "", attempt)
        if key in self.seen:
            return []
        self.seen.add(key)
        return [ProgressEvent(kind, pool_id, worker, attempt)]

    def from_state(self, state: _State) -> list[ProgressEvent]:
        """The steps up to the state seen, those a look between missed included (a task that
        runs was queued; one that finished on a worker ran), so the steps always come in
        order: queued, routed (a routed task), running, retrying."""
        status, home, attempt = state.status, state.home, state.attempt
        if not home:  # waiting to be routed (or ended before it was)
            return self.step("queued", "", 0) if status == TaskStatus.PENDING else []
        if state.routed:
            events = self.step("queued", "", 0) + self.step("routed", home, 0)
        else:
            events = self.step("queued", home, 0)
        ran = status in (TaskStatus.RUNNING, TaskStatus.RETRYING) or (
            bool(state.worker) and status in FINAL_STATUSES
        )
        if ran and attempt:
            events += self.step("running", home, attempt, state.worker)
        if status == TaskStatus.RETRYING:
            events += self.step("retrying", home, attempt)
        return events

    def from_entry(self, pool_id: str, fields: dict[bytes, bytes]) -> list[ProgressEvent]:
        kind = text(fields.get(b"kind"))
        attempt = int(text(fields.get(b"attempt")) or 0)
        if kind == "output":  # output means it runs, whether or not a look saw it running
            body = fields.get(b"text", b"").decode("utf-8", "replace")
            worker = text(fields.get(b"worker"))
            running = self.step("running", pool_id, attempt, worker)
            return [*running, ProgressEvent("output", pool_id, worker, attempt, body)]
        return []


async def follow_task(
    pools: Any, task_id: str, finished: Awaitable[Any]
) -> AsyncIterator[ProgressEvent]:
    """Yield the task's steps and output until `finished` (e.g. `pools.result(task_id)`) is done.

    `pools` is a `shared.client.PoolManager`. The follow reads with a connection of its own;
    `finished` belongs to the caller, who awaits it afterwards for its result or error (and
    cancels it if the follow is abandoned).
    """
    done = asyncio.ensure_future(finished)
    settings = pools.settings
    keys: Keys = settings.keys
    reader: Redis = connect(settings, blocking=True)
    tracker, stream, last = _Tracker(), "", b"0-0"
    try:
        while True:
            ending = done.done()
            state = await _read_state(pools.redis, keys, task_id)
            if state is not None:
                for event in tracker.from_state(state):
                    yield event
                if state.home and keys.task_progress(state.home, task_id) != stream:
                    stream, last = keys.task_progress(state.home, task_id), b"0-0"
            if stream:
                block = None if ending else int(POLL * 1000)
                reply = await reader.xread({stream: last}, count=READ_COUNT, block=block)
                entries = [entry for _, entry in flatten_read(reply)]
                for entry_id, fields in entries:
                    last = entry_id
                    for event in tracker.from_entry(state.home if state else "", fields):
                        yield event
                if ending and len(entries) == READ_COUNT:
                    continue  # more left to read before the end
            elif not ending:
                await asyncio.wait({done}, timeout=POLL)
            if ending:
                return
    finally:
        await reader.aclose()
