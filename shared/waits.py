"""What keeps a wait for a result from ending by itself, and one watcher that ends such waits.

A result never arrives when the task's record is gone (Redis restarted without persistence, or
the hash was deleted), or when the task needs an orchestrator and none is alive: a routed task
waits in the ingress, a retry in the delayed set, and a pool without a live worker gets no new
one. `WaitGuard` looks at every task waited on, for all of a client's waits at once: whether
an orchestrator lives when a wait starts (trusting a positive answer for ORCHESTRATOR_TRUST
seconds), and every WATCH_INTERVAL seconds whether the tasks' hashes still exist and, if no
orchestrator lives, what they wait for. Its cost does not grow with the number of waits
started: one look per interval, plus at most one per batch of waits started together.

An orchestrator is alive while its heartbeat hash (`keys.orchestrator(ID)`, refreshed every
supervision tick with `orchestrator_lease_ttl` as TTL) exists. Every live orchestrator also
takes or renews the scheduler lease (same TTL) every tick, so while that lease is held one is
alive: one GET answers, and no SCAN over the keyspace is needed. One killed without a chance to
clean up is seen as gone once its heartbeat and the lease expire (`orchestrator_lease_ttl`,
10 s by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from functools import partial

from redis.exceptions import RedisError

from shared.aio import stop_task
from shared.config import Settings
from shared.connection import Redis
from shared.errors import OrchestratorNotRunning, state_lost
from shared.keys import ORCHESTRATOR_GROUP
from shared.models import TaskStatus
from shared.replies import queued, text
from shared.task_state import read_state_fields

EXISTS_CHUNK = 1000  # keys per EXISTS command

WATCH_INTERVAL = 2.0  # seconds between looks at the waited tasks' hashes and the orchestrators
ORCHESTRATOR_TRUST = 1.0  # seconds a "some orchestrator is alive" answer is trusted
START_HINT = "start one with `mahavishnu orchestrator`"


async def live_orchestrators(redis: Redis, settings: Settings) -> list[str]:
    """Ids of the orchestrators alive now, sorted (two round trips).

    Candidates are the holder of the scheduler lease and the consumers of the ingress and
    control groups; a candidate is alive while its heartbeat exists. The lease holder counts
    as alive while the lease is held, even after its heartbeat went (it exited): another
    orchestrator takes the lease within a tick of it lapsing.
    """
    keys = settings.keys
    pipe = redis.pipeline(transaction=False)
    lease = queued(pipe, pipe.get(keys.scheduler_lease))
    groups = [
        queued(pipe, pipe.xinfo_consumers(stream, ORCHESTRATOR_GROUP))
        for stream in (keys.ingress, keys.control)
    ]
    replies = await pipe.execute(raise_on_error=False)
    names = {
        text(c["name"])
        for group in groups
        if not isinstance(consumers := group.reply_or_error(replies), Exception)
        for c in consumers  # (an error: no stream or group, none started here)
    }
    found = lease.reply_or_error(replies)
    holder = text(found) if isinstance(found, bytes | str) else None
    if holder is not None:
        names.add(holder)
    ordered = sorted(names)
    if not ordered:
        return []
    pipe = redis.pipeline(transaction=False)
    for name in ordered:
        pipe.exists(keys.orchestrator(name))
    beats = await pipe.execute()
    return [n for n, live in zip(ordered, beats, strict=True) if live or n == holder]


async def orchestrator_alive(redis: Redis, settings: Settings) -> bool:
    """Whether some orchestrator is alive: one GET while one holds the scheduler lease (every
    orchestrator tries to take or renew it every supervision tick)."""
    if await redis.exists(settings.keys.scheduler_lease):
        return True
    return bool(await live_orchestrators(redis, settings))


async def live_workers(redis: Redis, settings: Settings, pool_ids: Sequence[str]) -> dict[str, int]:
    """The number of workers with a live heartbeat in each pool (two round trips)."""
    keys = settings.keys
    pipe = redis.pipeline(transaction=False)
    for pool_id in pool_ids:
        pipe.smembers(keys.pool_workers(pool_id))
    members = [sorted(text(m) for m in found) for found in await pipe.execute()]
    pipe = redis.pipeline(transaction=False)
    for workers in members:
        for worker_id in workers:
            pipe.exists(keys.worker(worker_id))
    beats = iter(await pipe.execute() if any(members) else [])
    return {
        pool_id: sum(1 for _ in workers if next(beats))
        for pool_id, workers in zip(pool_ids, members, strict=True)
    }


# what a task in these states waits for that only an orchestrator does
NEEDS_ORCHESTRATOR: dict[str, str] = {
    TaskStatus.PENDING: "keeps waiting in the ingress",
    TaskStatus.RETRYING: "keeps waiting for its retry",
}


def _not_running(task_id: str, where: str) -> OrchestratorNotRunning:
    return OrchestratorNotRunning(
        f"no orchestrator is running; {START_HINT} (task {task_id} {where})", task_id
    )


def _no_worker(task_id: str, pool_id: str) -> OrchestratorNotRunning:
    return OrchestratorNotRunning(
        f"no orchestrator is running and pool {pool_id!r} has no live worker; {START_HINT} "
        f"(task {task_id} keeps waiting for pool {pool_id!r})",
        task_id,
    )


class WaitGuard:
    """Ends the waits that cannot end by themselves: `watch(task_id)` gives a future that gets
    the error to raise (a TaskStateLost or an OrchestratorNotRunning) if that happens."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._watched: dict[str, set[asyncio.Future[Exception]]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._alive_until = 0.0  # monotonic time until which an orchestrator is known alive
        self._closed = False

    def watch(self, task_id: str) -> asyncio.Future[Exception]:
        """A future set to the error a wait for this task must raise (call `unwatch` after)."""
        fut: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()
        self._watched.setdefault(task_id, set()).add(fut)
        self._wake.set()  # a starting wait is told at once when no orchestrator is alive
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="mahavishnu-wait-guard")
        return fut

    def unwatch(self, task_id: str, fut: asyncio.Future[Exception]) -> None:
        futures = self._watched.get(task_id)
        if futures is not None:
            futures.discard(fut)
            if not futures:
                del self._watched[task_id]

    async def orchestrators(self) -> list[str]:
        """The live orchestrators, asked now."""
        found = await live_orchestrators(self._redis, self._settings)
        if found:
            self._alive_until = time.monotonic() + ORCHESTRATOR_TRUST
        return found

    async def _alive(self) -> bool:
        if time.monotonic() < self._alive_until:
            return True
        if await orchestrator_alive(self._redis, self._settings):
            self._alive_until = time.monotonic() + ORCHESTRATOR_TRUST
            return True
        return False

    async def _run(self) -> None:
        next_full = time.monotonic() + WATCH_INTERVAL
        while self._watched and not self._closed:
            left = next_full - time.monotonic()
            if left > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
            self._wake.clear()
            full = time.monotonic() >= next_full
            if full:
                next_full = time.monotonic() + WATCH_INTERVAL
            try:
                await self._check(full)
            except RedisError:
                # Redis did not answer (a pause, a restart): the orchestrators' heartbeats may
                # lapse meanwhile though they live, so give them a lease to renew before a
                # missing heartbeat counts again
                self._alive_until = time.monotonic() + self._settings.orchestrator_lease_ttl
                await asyncio.sleep(0.2)  # the connection retries; the next round looks again

    async def _check(self, full: bool) -> None:
        """Look at the orchestrators, and (every interval, or when none is alive) at the tasks."""
        ids = list(self._watched)
        if not ids:
            return
        alive = await self._alive()
        if alive and full:
            for task_id in await self._missing(ids):
                self._end(task_id, partial(state_lost, task_id))
        elif not alive:
            await self._check_states(ids)

    async def _missing(self, ids: list[str]) -> list[str]:
        """The tasks among `ids` whose `task` hash is gone (one multi-key EXISTS per chunk: the
        look-ups share the ingress slot; then one per task of a chunk that came up short)."""
        keys = self._settings.keys
        pipe = self._redis.pipeline(transaction=False)
        chunks = [ids[i : i + EXISTS_CHUNK] for i in range(0, len(ids), EXISTS_CHUNK)]
        for chunk in chunks:
            pipe.exists(*(keys.task(t) for t in chunk))
        short = [c for c, n in zip(chunks, await pipe.execute(), strict=True) if n < len(c)]
        if not short:
            return []
        pipe = self._redis.pipeline(transaction=False)
        suspects = [t for chunk in short for t in chunk]
        for task_id in suspects:
            pipe.exists(keys.task(task_id))
        return [t for t, n in zip(suspects, await pipe.execute(), strict=True) if not n]

    async def _check_states(self, ids: list[str]) -> None:
        """No orchestrator is alive: end the waits for tasks that need one (or are gone)."""
        found = await read_state_fields(self._redis, self._settings.keys, ids, ["status", "pool"])
        states = [(v[0], v[1]) if v is not None else ("", "") for v in found]
        on_pools: dict[str, list[str]] = {}
        for task_id, (status, pool_id) in zip(ids, states, strict=True):
            where = NEEDS_ORCHESTRATOR.get(status)
            if not status:
                self._end(task_id, partial(state_lost, task_id))
            elif where is not None:
                self._end(task_id, partial(_not_running, task_id, where))
            elif pool_id and status in (TaskStatus.QUEUED, TaskStatus.RUNNING):
                on_pools.setdefault(pool_id, []).append(task_id)
        if not on_pools:
            return
        workers = await live_workers(self._redis, self._settings, sorted(on_pools))
        for pool_id, task_ids in on_pools.items():
            if not workers.get(pool_id):
                for task_id in task_ids:
                    self._end(task_id, partial(_no_worker, task_id, pool_id))

    def _end(self, task_id: str, error: Callable[[], Exception]) -> None:
        """Hand each wait for the task its own instance of the error."""
        for fut in self._watched.get(task_id, ()):
            if not fut.done():
                fut.set_result(error())

    async def aclose(self) -> None:
        self._closed = True
        await stop_task(self._task)
