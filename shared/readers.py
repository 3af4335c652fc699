"""The client's two blocking readers: its reply stream (results of the tasks it submitted) and
the events stream (completions of tasks it waits for but did not submit). One connection each,
however many tasks are waited on.

Both survive their stream being deleted (Redis restarted empty, FLUSHDB, an expired reply
stream): when a read finds nothing and the stream no longer exists, they read the new one from
its start, so entries written with smaller ids than the last one read (a server whose clock is
behind the old one's) are not skipped."""

from __future__ import annotations

import asyncio
import contextlib

from redis.exceptions import RedisError

from shared.aio import stop_task
from shared.codec import ResultShare, decode
from shared.connection import Redis
from shared.errors import MalformedMessage
from shared.models import TaskResult
from shared.replies import flatten_read, stream_entries, text

MAX_UNCLAIMED = 50_000  # delivered results kept for a later result() call


class ReplyReader:
    """One blocking reader of this client's reply stream, resolving a future per task id."""

    def __init__(self, redis: Redis, key: str) -> None:
        self._redis = redis
        self._key = key
        self._waiting: dict[str, asyncio.Future[TaskResult]] = {}
        self._early: dict[str, TaskResult] = {}
        self._unclaimed: dict[str, None] = {}  # delivered, not yet asked for (in order)
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def expect(self, task_id: str) -> asyncio.Future[TaskResult]:
        fut = self._waiting.get(task_id)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            early = self._early.pop(task_id, None)
            if early is not None:
                fut.set_result(early)
            self._waiting[task_id] = fut
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="mahavishnu-replies")
        return fut

    def awaiting(self, task_id: str) -> asyncio.Future[TaskResult] | None:
        """The future of a task this client submitted and has not consumed, if any."""
        return self._waiting.get(task_id)

    def forget(self, task_id: str) -> None:
        self._waiting.pop(task_id, None)
        self._unclaimed.pop(task_id, None)

    async def _run(self) -> None:
        last = b"0-0"
        while not self._closed:
            try:
                reply = await self._redis.xread({self._key: last}, count=500, block=5000)
            except RedisError:
                await asyncio.sleep(0.2)  # the connection retries; back off before reading again
                continue
            pairs = flatten_read(reply)
            if not pairs:
                last = await _restart_if_gone(self._redis, self._key, last)
            for _, (entry_id, fields) in pairs:
                last = entry_id
                try:
                    msg = decode(fields)
                except MalformedMessage:
                    continue
                if isinstance(msg, ResultShare):
                    self._deliver(msg.result)
            if pairs:  # every entry up to `last` has been read: drop them in one step
                with contextlib.suppress(RedisError):
                    await self._redis.xtrim(self._key, minid=_after(last), approximate=False)

    def _deliver(self, result: TaskResult) -> None:
        fut = self._waiting.get(result.task_id)
        if fut is None:
            self._early[result.task_id] = result
            if len(self._early) > MAX_UNCLAIMED:
                self._early.pop(next(iter(self._early)))
        elif not fut.done():
            fut.set_result(result)
            self._unclaimed[result.task_id] = None
            if len(self._unclaimed) > MAX_UNCLAIMED:  # nobody asked for the oldest: drop it
                oldest = next(iter(self._unclaimed))  # (a later result() reads its hash)
                del self._unclaimed[oldest]
                self._waiting.pop(oldest, None)

    async def aclose(self) -> None:
        self._closed = True
        await stop_task(self._task)
        for fut in self._waiting.values():
            fut.cancel()


def _after(entry_id: bytes) -> str:
    """The smallest stream id above `entry_id` (XTRIM MINID keeps ids at or above it)."""
    ms, _, seq = entry_id.partition(b"-")
    return f"{int(ms)}-{int(seq or 0) + 1}"


async def _restart_if_gone(redis: Redis, key: str, last: bytes) -> bytes:
    """Where a reader that found nothing reads next: the start, if its stream is gone."""
    if last in (b"0-0", b"$"):
        return last
    try:
        return last if await redis.exists(key) else b"0-0"
    except RedisError:
        return last


class CompletionWatcher:
    """One blocking reader of the events stream for every wait on a task this client did not
    submit: it wakes the waiters of each TASK_COMPLETED it sees (one connection for all)."""

    def __init__(self, redis: Redis, key: str) -> None:
        self._redis = redis
        self._key = key
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._reading = asyncio.Event()
        self._closed = False

    async def watch(self, task_id: str) -> asyncio.Event:
        """An event set when the task's TASK_COMPLETED is seen (call `unwatch` when done)."""
        event = asyncio.Event()
        self._waiters.setdefault(task_id, set()).add(event)
        if self._task is None or self._task.done():
            self._reading = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="mahavishnu-completions")
        await self._reading.wait()  # the reader has its starting point: no event slips by
        return event

    def unwatch(self, task_id: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get(task_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[task_id]

    async def _run(self) -> None:
        try:
            newest = stream_entries(await self._redis.xrevrange(self._key, count=1))
            last = newest[0][0] if newest else b"0-0"
        except RedisError:
            last = b"$"  # the waiters' periodic look at the hash covers what this misses
        self._reading.set()
        while self._waiters and not self._closed:
            try:
                reply = await self._redis.xread({self._key: last}, count=1000, block=2000)
            except RedisError:
                await asyncio.sleep(0.2)  # the connection retries; back off before reading again
                continue
            pairs = flatten_read(reply)
            if not pairs:
                last = await _restart_if_gone(self._redis, self._key, last)
            for _, (entry_id, fields) in pairs:
                last = entry_id
                if fields.get(b"type") == b"TASK_COMPLETED":
                    for event in self._waiters.get(text(fields.get(b"task")), ()):
                        event.set()

    async def aclose(self) -> None:
        self._closed = True
        await stop_task(self._task)
