"""The memory aggregator: sends every pool's memory records to Session-Buddy and Akosha.

Runs inside each orchestrator when `memory_aggregation_enabled`. A sync pass runs every
`memory_sync_interval` seconds, and at once when `memory_sync_burst` tasks finished since the
last one (it counts TASK_COMPLETED events) or when a failing service's backoff is over. A pass
goes over every pool — live ones and closed ones whose memory stream still exists — and for each
destination reads through that destination's consumer group (`watermark.py`), sends, and
acknowledges what the service took.

A service that is down or answers with an error keeps its records pending: the pass for that
destination stops, the error is recorded (`memsync:status`, shown by `pool monitor`) and the
next try waits an exponential backoff with full jitter (`shared/retries.py` `retry_delay`, from
1 s to `memory_sync_backoff_max`). The backlog per pool and destination is the pool's memory
stream, bounded by `memory_max_len`: records trimmed before a destination took them are counted
as `lost` for it, logged and shown, never silently skipped.

Re-send window: Session-Buddy has no record id, so a record it stored whose acknowledgement was
lost (the orchestrator was killed between the two, or the reply was lost) is sent again by
whoever retries it: at most one record per pool and destination, and none when its
`search_by_source_session` shows the record's artifact URI (checked before any batch that was
delivered before: a retry, or a dead orchestrator's entries).
Akosha gets at most the batch in flight again, under the same `memory_id`s: it refuses those
it holds as duplicate keys, which counts as stored, so it keeps each task once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.exceptions import RedisError

from orchestrator.memory.destinations import (
    AKOSHA,
    SESSION_BUDDY,
    SyncFailure,
    ToolCaller,
    connect,
    default_project,
    held_artifacts,
    store_memories,
    store_reflections,
)
from orchestrator.memory.stats import memory_report
from orchestrator.memory.watermark import Batch, Watermark
from shared.aio import stop_loops, wait_any
from shared.codec import MessageType
from shared.config import Settings
from shared.connection import Redis, flatten_read, text
from shared.connection import connect as connect_redis
from shared.hooks import HOOKS
from shared.memory import MemoryRecord
from shared.retries import retry_delay
from shared.state import live_pool_ids

log = logging.getLogger("mahavishnu.memory")

BACKOFF_BASE = 1.0  # seconds before the first retry of a failing service (doubling, jittered)
HELD_LOOKUP = 200  # reflections of a pool looked at before re-sending taken-over entries
BURST_BLOCK_MS = 1000
WATCH_STOP_MARGIN = 5.0  # seconds beyond its block the burst watcher gets to end by itself


class _Backoff:
    """When a failing destination may be tried again."""

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.failures = 0
        self.next_try = 0.0

    def failed(self) -> float:
        self.failures += 1
        delay = max(0.2, retry_delay(self.failures, BACKOFF_BASE, self.cap))
        self.next_try = time.monotonic() + delay
        return delay

    def succeeded(self) -> None:
        self.failures, self.next_try = 0, 0.0


class Aggregator:
    """Syncs memory records of every pool to the configured destinations."""

    def __init__(self, settings: Settings, redis: Redis, consumer: str) -> None:
        self.settings = settings
        self.keys = settings.keys
        self.redis = redis
        self.consumer = consumer
        self.destinations = list(dict.fromkeys(settings.memory_sync_destinations))
        self.project = default_project(settings)
        self._backoff = {d: _Backoff(settings.memory_sync_backoff_max) for d in self.destinations}
        self._soon = asyncio.Event()
        self._pass_lock = asyncio.Lock()
        self._stop = asyncio.Event()  # run's stop event: a pass ends early once it is set
        self.passes = 0
        self.sent: dict[str, int] = dict.fromkeys(self.destinations, 0)

    def wake(self) -> None:
        """Run a pass now (tests, a burst of finished tasks)."""
        self._soon.set()

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Sync until `stop` is set; the first pass waits for `ready` (the orchestrator's first
        heartbeat: before it, another orchestrator would take this one for dead)."""
        self._stop = stop
        if ready is not None:
            await wait_any(stop, ready)
        ended = asyncio.Event()
        watcher = asyncio.create_task(self._burst_loop(stop, ended), name="memory-burst")
        try:
            while not stop.is_set():
                self._soon.clear()
                try:
                    await self.sync_once()
                except RedisError as exc:
                    log.warning("memory sync pass failed on Redis: %s", exc)
                await wait_any(stop, self._soon, timeout=self._next_wait())
        finally:
            # the watcher ends by itself within one blocking read: a cancel landing inside
            # redis-py (a cluster client setting up its nodes) could leave connections open
            ended.set()
            await stop_loops(watcher, timeout=BURST_BLOCK_MS / 1000 + WATCH_STOP_MARGIN)

    def _next_wait(self) -> float:
        wait = self.settings.memory_sync_interval
        now = time.monotonic()
        for backoff in self._backoff.values():
            if backoff.failures:
                wait = min(wait, max(0.0, backoff.next_try - now))
        return wait

    async def _burst_loop(self, stop: asyncio.Event, ended: asyncio.Event) -> None:
        """Wake a pass once `memory_sync_burst` tasks finished since the last pass."""
        reader = connect_redis(self.settings, blocking=True, retries=0)
        seen, last_id = 0, "$"
        passes = self.passes
        try:
            while not stop.is_set() and not ended.is_set():
                try:
                    reply = await reader.xread(
                        {self.keys.events: last_id}, count=1000, block=BURST_BLOCK_MS
                    )
                except RedisError as exc:
                    log.debug("memory burst watch: %s", exc)
                    await wait_any(stop, ended, timeout=1.0)
                    continue
                if self.passes != passes:
                    seen, passes = 0, self.passes
                for _, (entry_id, fields) in flatten_read(reply):
                    last_id = text(entry_id)
                    if text(fields.get(b"type")) == MessageType.TASK_COMPLETED:
                        seen += 1
                if seen >= self.settings.memory_sync_burst:
                    seen = 0
                    self._soon.set()
        finally:
            await reader.aclose()

    async def pool_ids(self) -> list[str]:
        """Live pools plus the pools the aggregator still follows (closed ones whose stream
        has not expired)."""
        live = await live_pool_ids(self.redis, self.settings)
        if live:
            await self.redis.sadd(self.keys.memory_sync_pools, *live)
        known = {text(m) for m in await self.redis.smembers(self.keys.memory_sync_pools)}
        return sorted(known | set(live))

    async def sync_once(self) -> dict[str, int]:
        """One pass: every pool, every destination not backing off. Returns records sent.
        Passes of one aggregator never overlap (they would read the same own-pending entries)."""
        async with self._pass_lock:
            return await self._pass()

    async def _pass(self) -> dict[str, int]:
        pool_ids = await self.pool_ids()
        sent: dict[str, int] = {}
        now = time.monotonic()
        for destination in self.destinations:
            backoff = self._backoff[destination]
            if backoff.failures and now < backoff.next_try:
                continue
            try:
                sent[destination] = await self._sync_destination(destination, pool_ids)
            except Exception as exc:  # a service down or failing must never stop the loop
                if isinstance(exc, RedisError):
                    raise
                delay = backoff.failed()
                await self._record_error(destination, exc)
                log.warning(
                    "memory sync to %s failed (attempt %d, next in %.1fs): %s",
                    destination,
                    backoff.failures,
                    delay,
                    _describe(exc),
                )
            else:
                backoff.succeeded()
                self.sent[destination] += sent[destination]
        self.passes += 1
        if HOOKS:  # only where /metrics is served: the lag costs a look at every pool
            totals, _ = await memory_report(self.redis, self.settings, pool_ids)
            for target, numbers in totals.items():
                HOOKS.memory_sync(target, numbers.lag_s)
        return sent

    async def _sync_destination(self, destination: str, pool_ids: list[str]) -> int:
        total = 0
        async with connect(self.settings, destination) as remote:
            caller = ToolCaller(remote, self.settings)
            for pool_id in pool_ids:
                total += await self._sync_pool(caller, destination, pool_id)
        await self.redis.hset(
            self.keys.memory_sync_status,
            mapping={f"{destination}:last_pass": repr(time.time())},
        )
        return total

    async def _sync_pool(self, caller: ToolCaller, destination: str, pool_id: str) -> int:
        mark = Watermark(self.redis, self.settings, destination, self.consumer)
        sent = 0
        while not self._stop.is_set():
            # before every read, not once a pass: records trimmed while the pass runs are
            # counted lost here, instead of being skipped over by the next read uncounted
            exists, lost = await mark.prepare(pool_id)
            if not exists:
                if not sent:
                    await self._forget_if_gone(pool_id)
                return sent
            if lost:
                log.warning(
                    "pool %s: %s memory record(s) were trimmed (memory_max_len=%d) before %s "
                    "took them; counted as lost",
                    pool_id,
                    "some" if lost < 0 else lost,
                    self.settings.memory_max_len,
                    destination,
                )
            if not await self.redis.exists(self.keys.orchestrator(self.consumer)):
                # without a live heartbeat others take this consumer's entries: sending them
                # now could send them twice; the next pass (after a tick) goes on
                raise SyncFailure(f"orchestrator {self.consumer} has no live heartbeat")
            batch = await mark.next_batch(pool_id, self.settings.memory_sync_batch)
            if not batch.entries:
                return sent
            sent += await self._send(caller, mark, destination, pool_id, batch)
        return sent

    async def _send(
        self, caller: ToolCaller, mark: Watermark, destination: str, pool_id: str, batch: Batch
    ) -> int:
        gone = [eid for eid, fields in batch.entries if not fields]
        copies: list[bytes] = []
        records: list[tuple[bytes, MemoryRecord]] = []
        for entry_id, fields in batch.entries:
            if not fields:
                continue
            record = MemoryRecord.from_fields(
                text(entry_id), {text(k): text(v) for k, v in fields.items()}, pool_id
            )
            if record.pool_id != pool_id:  # a shared result: its own pool syncs the record
                copies.append(entry_id)
            else:
                records.append((entry_id, record))
        await mark.ack(pool_id, gone, "lost")
        await mark.ack(pool_id, copies, "skipped")

        async def ack(ids: list[bytes]) -> None:
            await mark.ack(pool_id, ids)

        if destination == SESSION_BUDDY:
            held: set[str] = set()
            if batch.again:
                held = await held_artifacts(caller, pool_id, HELD_LOOKUP)
            await store_reflections(caller, self.project, pool_id, records, ack, held=held)
        elif destination == AKOSHA:
            await store_memories(caller, records, ack)
        return len(records)

    async def _forget_if_gone(self, pool_id: str) -> None:
        """Stop following a closed pool whose memory stream expired."""
        if not await self.redis.sismember(self.keys.pools, pool_id):
            await self.redis.srem(self.keys.memory_sync_pools, pool_id)
            await self.redis.delete(self.keys.pool_memory_sync(pool_id))

    async def _record_error(self, destination: str, exc: BaseException) -> None:
        try:
            await self.redis.hset(
                self.keys.memory_sync_status,
                mapping={
                    f"{destination}:last_error": _describe(exc)[:500],
                    f"{destination}:last_error_at": repr(time.time()),
                },
            )
        except RedisError as err:
            log.warning("could not record the memory sync error: %s", err)


def _describe(exc: BaseException) -> str:
    """The innermost message of an error (transport errors come wrapped in groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, SyncFailure):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def sync_state(aggregator: Aggregator) -> dict[str, Any]:
    """What this process's aggregator did (for logs and tests)."""
    return {"passes": aggregator.passes, "sent": dict(aggregator.sent)}
