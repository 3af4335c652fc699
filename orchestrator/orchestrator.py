"""The control plane: route tasks, carry out control commands, supervise pools.

Any number of orchestrators share the work as members of the `orchestrators` group on the
ingress and control streams. Each pool is supervised by the one orchestrator holding its lease
(a key with a TTL, renewed every tick); when that orchestrator dies the lease expires and another
adopts the pool. The supervision tick also writes the pools' load hashes, takes back entries held
by dead workers (or past their task's deadline), moves due retries back into the streams, and
takes over ingress entries held by dead orchestrators.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from orchestrator.local_pool import LocalPoolSupervisor
from orchestrator.routing import Candidate, Router, eligible, explain
from shared.codec import (
    Control,
    ControlAction,
    PoolClosed,
    PoolCreated,
    StatusUpdate,
    TaskDelegate,
    _Message,
    decode,
    encode,
    unpack,
)
from shared.config import Settings
from shared.connection import (
    TRANSIENT_ERRORS,
    Entry,
    Redis,
    ack_and_delete,
    connect,
    decode_hash,
    ensure_group,
    flatten_read,
    text,
)
from shared.errors import ExecutorError, MalformedMessage
from shared.keys import ORCHESTRATOR_GROUP, WORKER_GROUP
from shared.models import PoolSpec, PoolStatus, PoolType, TaskResult, TaskStatus, new_id
from shared.scripts import Scripts, flat_fields
from shared.state import (
    ACCEPTING_STATUSES,
    FinalResult,
    finalize_results,
    pool_hash_fields,
    queue_dead_letter,
)
from worker.executors import build_executor

log = logging.getLogger("mahavishnu.orchestrator")

MAX_WAITING = 10_000
AUTOSCALE_COOLDOWN = 10.0
RECLAIM_MIN_IDLE_MS = 500


@dataclass
class PoolView:
    """One pool as seen at the last supervision tick."""

    spec: PoolSpec
    status: PoolStatus
    raw: dict[str, str]
    lease: str
    live_workers: dict[str, dict[str, str]] = field(default_factory=dict)
    members: set[str] = field(default_factory=set)
    backlog: int = 0

    @property
    def capacity(self) -> int:
        """Sum of the live workers' concurrency."""
        return sum(int(w.get("concurrency", "0") or 0) for w in self.live_workers.values())

    @property
    def in_flight(self) -> int:
        """Sum of the live workers' running tasks."""
        return sum(int(w.get("in_flight", "0") or 0) for w in self.live_workers.values())

    @property
    def target(self) -> int:
        """The number of workers the pool should have."""
        return int(self.raw.get("target_workers", self.spec.min_workers) or 0)


@dataclass
class _Waiting:
    entry_id: bytes
    message: TaskDelegate
    since: float
    fields: dict[bytes, bytes]  # the entry as read: forwarded unchanged, never re-encoded


class Orchestrator:
    """Routes the ingress stream, handles control commands and supervises pools."""

    def __init__(
        self,
        settings: Settings,
        *,
        orchestrator_id: str | None = None,
        log_dir: Path | None = None,
        stop_workers_on_exit: bool = True,
    ) -> None:
        self.settings = settings
        self.keys = settings.keys
        self.id = orchestrator_id or new_id("o")
        self.redis: Redis = connect(settings, retries=0)
        self._reader: Redis = connect(settings, blocking=True, retries=0)
        self._scripts = Scripts(self.redis)
        self.router = Router(settings.pool_routing_strategy)
        self.local = LocalPoolSupervisor(settings, log_dir or Path(".mahavishnu/logs"))
        self.stop_workers_on_exit = stop_workers_on_exit
        self.pools: dict[str, PoolView] = {}
        self._waiting: list[_Waiting] = []
        self._route_lock = asyncio.Lock()
        self._tick_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._ticked = asyncio.Event()
        self._low_backlog_since: dict[str, float] = {}
        self._closing_since: dict[str, float] = {}
        self.routed = 0

    def request_stop(self) -> None:
        """Stop reading, finish the current batch, stop local workers and exit."""
        self._stopping.set()

    async def wait_ready(self) -> None:
        """Wait until the first supervision tick has run."""
        await self._ticked.wait()

    async def run(self) -> None:
        """Serve until `request_stop`."""
        for stream in (self.keys.ingress, self.keys.control):
            await ensure_group(self.redis, stream, ORCHESTRATOR_GROUP)
        loops = [
            asyncio.create_task(self._ingress_loop(), name="ingress"),
            asyncio.create_task(self._supervise_loop(), name="supervise"),
        ]
        try:
            stopped = asyncio.create_task(self._stopping.wait())
            done, _ = await asyncio.wait([*loops, stopped], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopped and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self._stopping.set()
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self._shutdown()

    async def _shutdown(self) -> None:
        if self.stop_workers_on_exit:
            await self.local.stop_all(self.settings.drain_grace + 5)
        try:
            pipe = self.redis.pipeline(transaction=False)
            for pool_id in self._owned():
                await self._scripts.release_lease(
                    keys=[self.keys.pool_lease(pool_id)], args=[self.id], client=pipe
                )
            pipe.delete(self.keys.orchestrator(self.id))
            await pipe.execute()
        except RedisError as exc:
            log.warning("could not release leases: %s", exc)
        await self._reader.aclose()
        await self.redis.aclose()

    def _owned(self) -> list[str]:
        return [p for p, v in self.pools.items() if v.lease == self.id]

    # ------------------------------------------------------------------ ingress

    async def _ingress_loop(self) -> None:
        backoff = 0.1
        recover = False
        while not self._stopping.is_set():
            try:
                recovered = recover
                if recover:
                    entries = await self._read_own_pending()
                    recover = False
                else:
                    streams = {self.keys.control: ">"}
                    if len(self._waiting) < MAX_WAITING:
                        streams[self.keys.ingress] = ">"
                    reply = await self._reader.xreadgroup(
                        ORCHESTRATOR_GROUP,
                        self.id,
                        streams,
                        count=self.settings.route_batch,
                        block=250 if self._waiting else 1000,
                    )
                    entries = flatten_read(reply)
                for stream, entry in entries:
                    if stream == self.keys.control:
                        await self._handle_control(entry)
                tasks = [e for s, e in entries if s == self.keys.ingress]
                await self.route(tasks, reclaimed=recovered)
                backoff = 0.1
            except TRANSIENT_ERRORS as exc:
                log.warning("ingress read failed (%s); retrying in %.1fs", exc, backoff)
                recover = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except RedisError as exc:
                # NOGROUP / UNBLOCKED: the stream or its group was deleted under us
                if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                    raise
                for stream in (self.keys.ingress, self.keys.control):
                    await ensure_group(self.redis, stream, ORCHESTRATOR_GROUP)

    async def _read_own_pending(self) -> list[tuple[str, Entry]]:
        """Entries pending on this orchestrator that it does not hold (lost read replies)."""
        reply = await self._reader.xreadgroup(
            ORCHESTRATOR_GROUP,
            self.id,
            {self.keys.control: "0", self.keys.ingress: "0"},
            count=10_000,
        )
        held = {w.entry_id for w in self._waiting}
        entries = [(s, e) for s, e in flatten_read(reply) if e[0] not in held]
        gone = [(s, e[0]) for s, e in entries if not e[1]]
        if gone:  # deleted while pending on us: nothing to do but acknowledge
            pipe = self.redis.pipeline(transaction=False)
            for stream, entry_id in gone:
                ack_and_delete(pipe, stream, ORCHESTRATOR_GROUP, [entry_id])
            await pipe.execute()
        return [(s, e) for s, e in entries if e[1]]

    async def route(self, entries: list[Entry], *, reclaimed: bool = False) -> None:
        """Route a batch of ingress entries plus the tasks still waiting for a pool.

        `reclaimed` entries were read by an orchestrator that died: one it had already routed
        (its task hash names the entry) goes to the same pool again, never to a different one.
        """
        async with self._route_lock:
            await self._route(entries, reclaimed)

    async def _earlier_choices(self, items: list[_Waiting]) -> dict[bytes, str]:
        """Pools that a dead orchestrator had already chosen for these ingress entries."""
        pipe = self.redis.pipeline(transaction=False)
        for item in items:
            pipe.hmget(self.keys.task(item.message.task.id), ["routed_from", "pool"])
        replies = await pipe.execute()
        return {
            item.entry_id: text(pool)
            for item, (source, pool) in zip(items, replies, strict=True)
            if source is not None and source == item.entry_id and pool
        }

    async def _route(self, entries: list[Entry], reclaimed: bool = False) -> None:
        now = time.time()
        items: list[_Waiting] = []
        bad: list[tuple[bytes, str, dict[bytes, bytes]]] = []
        for entry_id, fields in entries:
            try:
                msg = decode(fields)
            except MalformedMessage as exc:
                bad.append((entry_id, str(exc), fields))
                continue
            if not isinstance(msg, TaskDelegate):
                bad.append((entry_id, f"a {msg.type} message does not belong on ingress", fields))
                continue
            items.append(_Waiting(entry_id, msg, now, fields))
        earlier = await self._earlier_choices(items) if reclaimed and items else {}
        items.extend(self._waiting)
        if not items and not bad:
            return
        candidates = await self._candidates()
        by_id = {c.pool_id: c for c in candidates}
        routed: list[tuple[_Waiting, Candidate]] = []
        waiting: list[_Waiting] = []
        expired: list[tuple[_Waiting, str]] = []
        for item in items:
            task = item.message.task
            chosen = by_id.get(earlier.get(item.entry_id, ""))
            if chosen is None:
                chosen = self.router.choose(task, eligible(candidates, task))
            if chosen is not None:
                routed.append((item, chosen))
            elif now - item.since >= task.queue_timeout:
                expired.append((item, explain(candidates, task)))
            else:
                waiting.append(item)
        self._waiting = waiting
        pipe = self.redis.pipeline(transaction=False)
        for item, pool in routed:
            # the choice is recorded before the entry is forwarded (see `route`)
            pipe.hset(
                self.keys.task(item.message.task.id),
                mapping={
                    "status": str(TaskStatus.QUEUED),
                    "pool": pool.pool_id,
                    "routed_from": item.entry_id,
                },
            )
            pipe.xadd(self.keys.pool_tasks(pool.pool_id), item.fields)
        ack_and_delete(pipe, self.keys.ingress, ORCHESTRATOR_GROUP, [i.entry_id for i, _ in routed])
        self._queue_malformed(pipe, self.keys.ingress, bad)
        if len(pipe):
            await pipe.execute()
        self.routed += len(routed)
        if expired:
            await self._fail(
                [
                    (i.message, f"not routed within {i.message.task.queue_timeout:g}s: {why}")
                    for i, why in expired
                ],
                ack=(self.keys.ingress, ORCHESTRATOR_GROUP, [i.entry_id for i, _ in expired]),
            )

    async def _candidates(self) -> list[Candidate]:
        views = [v for v in self.pools.values() if v.status in ACCEPTING_STATUSES]
        if not views:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for view in views:
            pipe.xlen(self.keys.pool_tasks(view.spec.id))
        backlogs = await pipe.execute()
        return [
            Candidate(
                pool_id=v.spec.id,
                status=v.status,
                worker_type=v.spec.worker_type,
                labels=v.spec.labels,
                live_workers=len(v.live_workers),
                capacity=v.capacity,
                backlog=int(b),
                max_queue=v.spec.max_queue,
            )
            for v, b in zip(views, backlogs, strict=True)
        ]

    def _queue_malformed(
        self,
        pipe: Any,
        stream: str,
        bad: list[tuple[bytes, str, dict[bytes, bytes]]],
        *,
        group: str = ORCHESTRATOR_GROUP,
        pool_id: str | None = None,
    ) -> None:
        """Dead-letter unreadable entries with the reason, and acknowledge them."""
        for entry_id, reason, fields in bad:
            log.warning("dead-lettered entry %s on %s: %s", text(entry_id), stream, reason)
            queue_dead_letter(
                pipe,
                self.settings,
                task_id=text(fields.get(b"task")),
                pool_id=pool_id,
                reason=f"malformed entry {text(entry_id)} on {stream}: {reason}",
                raw=fields,
            )
        ack_and_delete(pipe, stream, group, [b for b, _, _ in bad])

    async def _fail(
        self,
        failures: list[tuple[TaskDelegate, str]],
        *,
        status: TaskStatus = TaskStatus.FAILED,
        pool_id: str | None = None,
        ack: tuple[str, str, list[bytes]] | None = None,
    ) -> None:
        """Give tasks a final failed (or dead-lettered) result and acknowledge their entries."""
        now = time.time()
        finals = [
            FinalResult(
                TaskResult(
                    task_id=msg.task.id,
                    pool_id=pool_id,
                    status=status,
                    error=reason,
                    attempts=msg.attempt,
                    finished_at=now,
                ),
                msg.task.reply_to,
                msg.task.describe(),
                list(msg.task.tags),
                token=f"{self.id}/{msg.task.id}/{msg.attempt}",
                history=[*msg.history, reason],
            )
            for msg, reason in failures
        ]

        def extra(pipe: Any) -> None:
            for final in finals:
                if final.result.status is TaskStatus.DEAD_LETTERED:
                    queue_dead_letter(
                        pipe,
                        self.settings,
                        task_id=final.result.task_id,
                        pool_id=pool_id,
                        reason=final.result.error or "",
                        attempts=final.result.attempts,
                        history=final.history,
                    )
            if ack is not None:
                ack_and_delete(pipe, *ack)

        await finalize_results(self.redis, self._scripts, self.settings, finals, extra=extra)

    # ------------------------------------------------------------------ control

    async def _handle_control(self, entry: Entry) -> None:
        entry_id, fields = entry
        try:
            msg = decode(fields)
            if not isinstance(msg, Control):
                raise MalformedMessage(f"a {msg.type} message does not belong on control")
        except MalformedMessage as exc:
            pipe = self.redis.pipeline(transaction=False)
            self._queue_malformed(pipe, self.keys.control, [(entry_id, str(exc), fields)])
            await pipe.execute()
            return
        if msg.action is ControlAction.SPAWN and msg.spec is not None:
            await self._spawn(msg.spec)
        elif msg.action is ControlAction.SCALE and msg.workers is not None:
            await self._scale(msg.pool_id, msg.workers)
        elif msg.action is ControlAction.CLOSE:
            await self._close(msg.pool_id)
        pipe = self.redis.pipeline(transaction=False)
        ack_and_delete(pipe, self.keys.control, ORCHESTRATOR_GROUP, [entry_id])
        await pipe.execute()

    async def _spawn(self, spec: PoolSpec) -> None:
        key = self.keys.pool(spec.id)
        if await self.redis.exists(key):
            return  # a re-delivered spawn: the pool exists already
        problem = _spawn_problem(spec)
        now = time.time()
        if problem:
            log.warning("pool %s (%s) cannot start: %s", spec.id, spec.name, problem)
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(
                key,
                mapping=pool_hash_fields(spec, PoolStatus.FAILED, created_at=now, detail=problem),
            )
            pipe.expire(key, self.settings.result_ttl)
            self._publish(
                pipe, StatusUpdate(pool_id=spec.id, status=PoolStatus.FAILED, detail=problem)
            )
            await pipe.execute()
            return
        await ensure_group(self.redis, self.keys.pool_tasks(spec.id), WORKER_GROUP)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(
            key,
            mapping=pool_hash_fields(
                spec, PoolStatus.STARTING, created_at=now, target_workers=spec.min_workers
            ),
        )
        pipe.sadd(self.keys.pools, spec.id)
        pipe.set(self.keys.pool_lease(spec.id), self.id, px=self._lease_ms)
        self._publish(pipe, PoolCreated(spec=spec))
        self._publish(pipe, StatusUpdate(pool_id=spec.id, status=PoolStatus.STARTING))
        await pipe.execute()
        log.info("created pool %s (%s, %s)", spec.id, spec.name, spec.pool_type)
        await self.tick()

    async def _scale(self, pool_id: str, workers: int) -> None:
        raw = decode_hash(await self.redis.hgetall(self.keys.pool(pool_id)))
        if raw.get("status") not in ACCEPTING_STATUSES:
            return
        spec = PoolSpec.model_validate_json(raw["spec"])
        target = max(spec.min_workers, min(spec.max_workers, workers))
        await self._set_status(
            pool_id,
            PoolStatus.SCALING,
            f"scaling to {target}",
            expect=ACCEPTING_STATUSES,
            target_workers=target,
        )
        await self.tick()

    async def _close(self, pool_id: str) -> None:
        closable = {*ACCEPTING_STATUSES, PoolStatus.FAILED}
        if await self._set_status(pool_id, PoolStatus.CLOSING, "closing", expect=closable):
            await self.tick()

    async def _set_status(
        self,
        pool_id: str,
        status: PoolStatus,
        detail: str = "",
        *,
        expect: Iterable[PoolStatus],
        **extra: Any,
    ) -> bool:
        """Set a pool's status if it is still one of `expect`; announce it. True if set."""
        fields = {"status": str(status), "detail": detail, **{k: str(v) for k, v in extra.items()}}
        written = await self._scripts.set_pool_status(
            keys=[self.keys.pool(pool_id)],
            args=[",".join(str(s) for s in expect), *flat_fields(fields)],
        )
        if not written:
            return False
        pipe = self.redis.pipeline(transaction=False)
        self._publish(pipe, StatusUpdate(pool_id=pool_id, status=status, detail=detail))
        await pipe.execute()
        if pool_id in self.pools:
            self.pools[pool_id].status = status
        log.info("pool %s is %s %s", pool_id, status, detail)
        return True

    def _publish(self, pipe: Any, message: _Message) -> None:
        pipe.xadd(
            self.keys.events, encode(message), maxlen=self.settings.events_max_len, approximate=True
        )

    @property
    def _lease_ms(self) -> int:
        return int(self.settings.orchestrator_lease_ttl * 1000)

    # -------------------------------------------------------------- supervision

    async def _supervise_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
            except TRANSIENT_ERRORS as exc:
                log.warning("supervision tick failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.supervise_interval)

    async def tick(self) -> None:
        """One supervision pass over every pool (also run right after control commands)."""
        async with self._tick_lock:
            await self._tick()

    async def _tick(self) -> None:
        await self._refresh()
        for pool_id in self._owned():
            view = self.pools.get(pool_id)
            if view is not None:
                await self._supervise(view)
        await self._write_load()
        await self._move_due_retries()
        await self._reclaim_from_dead_orchestrators()
        self._ticked.set()

    async def _refresh(self) -> None:
        """Read every pool, its lease, workers and backlog; take free leases."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(
            self.keys.orchestrator(self.id),
            mapping={
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "last_seen": repr(time.time()),
            },
        )
        pipe.pexpire(self.keys.orchestrator(self.id), self._lease_ms)
        pipe.smembers(self.keys.pools)
        ids = sorted(text(m) for m in (await pipe.execute())[2])
        pipe = self.redis.pipeline(transaction=False)
        for pool_id in ids:
            pipe.hgetall(self.keys.pool(pool_id))
            pipe.smembers(self.keys.pool_workers(pool_id))
            pipe.xlen(self.keys.pool_tasks(pool_id))
            await self._scripts.acquire_lease(
                keys=[self.keys.pool_lease(pool_id)], args=[self.id, self._lease_ms], client=pipe
            )
            pipe.get(self.keys.pool_lease(pool_id))
        replies = await pipe.execute()
        views: dict[str, PoolView] = {}
        for n, pool_id in enumerate(ids):
            raw, members, backlog, _, lease = replies[n * 5 : n * 5 + 5]
            fields = decode_hash(raw)
            try:
                spec = PoolSpec.model_validate_json(fields["spec"])
                status = PoolStatus(fields.get("status", "failed"))
            except (KeyError, ValueError):
                continue
            views[pool_id] = PoolView(
                spec=spec,
                status=status,
                raw=fields,
                lease=text(lease),
                members={text(m) for m in members},
                backlog=int(backlog),
            )
        pipe = self.redis.pipeline(transaction=False)
        order = [(pool_id, w) for pool_id, v in views.items() for w in sorted(v.members)]
        for _, worker_id in order:
            pipe.hgetall(self.keys.worker(worker_id))
        beats = await pipe.execute() if order else []
        for (pool_id, worker_id), beat in zip(order, beats, strict=True):
            if beat:
                views[pool_id].live_workers[worker_id] = decode_hash(beat)
        self.pools = views

    async def _supervise(self, view: PoolView) -> None:
        pool_id = view.spec.id
        live = set(view.live_workers)
        if view.status is PoolStatus.CLOSING:
            await self._finish_close(view)
            return
        if view.status not in ACCEPTING_STATUSES:
            return
        await self._reclaim(view)
        if view.spec.pool_type is PoolType.LOCAL:
            self.local.reap(pool_id, live)
            if self.local.start_failed(pool_id):
                self.local.stop_pool(pool_id)
                detail = f"workers fail to start: {self.local.pool(pool_id).last_error}"
                await self._set_status(pool_id, PoolStatus.FAILED, detail, expect=[view.status])
                return
            target = self._autoscale(view)
            await self._reconcile_processes(view, target)
        target = view.target
        serving = len(live)
        if serving >= max(target, 1) or (target == 0 and view.status is PoolStatus.STARTING):
            wanted = PoolStatus.RUNNING
        elif view.status is PoolStatus.STARTING:
            wanted = PoolStatus.STARTING
        elif view.status is PoolStatus.SCALING and serving > 0:
            wanted = PoolStatus.SCALING
        else:
            wanted = PoolStatus.DEGRADED if serving == 0 else PoolStatus.RUNNING
        if wanted is PoolStatus.RUNNING and serving > target:
            wanted = PoolStatus.SCALING if view.status is PoolStatus.SCALING else PoolStatus.RUNNING
        if wanted is not view.status:
            detail = f"{serving}/{target} workers"
            await self._set_status(pool_id, wanted, detail, expect=[view.status])

    def _autoscale(self, view: PoolView) -> int:
        target = view.target
        spec = view.spec
        if not spec.auto_scale:
            return target
        per_worker = spec.concurrency * self.settings.autoscale_backlog_per_worker
        wanted = max(spec.min_workers, min(spec.max_workers, math.ceil(view.backlog / per_worker)))
        now = time.monotonic()
        if wanted > target:
            self._low_backlog_since.pop(spec.id, None)
            target = wanted
        elif wanted < target:
            since = self._low_backlog_since.setdefault(spec.id, now)
            if now - since >= AUTOSCALE_COOLDOWN:
                target -= 1
                self._low_backlog_since[spec.id] = now
        else:
            self._low_backlog_since.pop(spec.id, None)
        if target != view.target:
            view.raw["target_workers"] = str(target)
        return target

    async def _reconcile_processes(self, view: PoolView, target: int) -> None:
        pool_id = view.spec.id
        if str(target) != view.raw.get("target_workers"):
            await self.redis.hset(self.keys.pool(pool_id), "target_workers", str(target))
        mine = self.local.alive(pool_id)
        serving = set(view.live_workers) | {p.worker_id for p in mine}
        missing = target - len(serving)
        if missing > 0 and self.local.may_start(pool_id):
            for _ in range(min(missing, 8)):
                await self.local.start_worker(pool_id, view.spec.concurrency)
        elif missing < 0:
            for proc in sorted(mine, key=lambda p: p.started_at, reverse=True)[:-missing]:
                self.local.stop_worker(proc)

    async def _finish_close(self, view: PoolView) -> None:
        pool_id = view.spec.id
        self.local.stop_pool(pool_id)
        since = self._closing_since.setdefault(pool_id, time.monotonic())
        limit = self.settings.drain_grace + self.settings.heartbeat_ttl + 5
        still = self.local.running(pool_id) or view.live_workers
        if still and time.monotonic() - since < limit:
            return
        await self._requeue_leftovers(pool_id)
        keys = self.keys
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(
            keys.pool_tasks(pool_id),
            keys.pool_load(pool_id),
            keys.pool_workers(pool_id),
            keys.pool_inbox(pool_id),
        )
        pipe.hset(
            keys.pool(pool_id),
            mapping={"status": str(PoolStatus.CLOSED), "closed_at": repr(time.time())},
        )
        pipe.expire(keys.pool(pool_id), self.settings.result_ttl)
        pipe.srem(keys.pools, pool_id)
        self._publish(
            pipe, StatusUpdate(pool_id=pool_id, status=PoolStatus.CLOSED, detail="closed")
        )
        self._publish(pipe, PoolClosed(pool_id=pool_id, reason="closed on request"))
        await self._scripts.release_lease(
            keys=[keys.pool_lease(pool_id)], args=[self.id], client=pipe
        )
        await pipe.execute()
        self._closing_since.pop(pool_id, None)
        self.local.pools.pop(pool_id, None)
        self.pools.pop(pool_id, None)
        log.info("closed pool %s", pool_id)

    async def _requeue_leftovers(self, pool_id: str) -> None:
        """Re-route a closed pool's routed tasks; fail the ones sent to it directly."""
        stream = self.keys.pool_tasks(pool_id)
        start = "-"
        while True:
            entries = await self.redis.xrange(stream, min=start, max="+", count=500)
            if not entries:
                return
            start = "(" + text(entries[-1][0])
            pipe = self.redis.pipeline(transaction=False)
            failures: list[tuple[TaskDelegate, str]] = []
            for entry_id, fields in entries:
                try:
                    msg = decode(fields)
                    if not isinstance(msg, TaskDelegate):
                        raise MalformedMessage(f"a {msg.type} message on a pool stream")
                except MalformedMessage as exc:
                    bad = [(entry_id, str(exc), fields)]
                    self._queue_malformed(pipe, stream, bad, group=WORKER_GROUP, pool_id=pool_id)
                    continue
                if msg.task.pool_id:
                    failures.append((msg, f"pool {pool_id} closed before the task ran"))
                else:
                    pipe.xadd(self.keys.ingress, encode(msg))
                    pipe.hset(self.keys.task(msg.task.id), "status", str(TaskStatus.PENDING))
            await pipe.execute()
            if failures:
                await self._fail(failures, pool_id=pool_id)

    async def _write_load(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        now = repr(time.time())
        for pool_id in self._owned():
            view = self.pools[pool_id]
            in_flight = view.in_flight
            pipe.hset(
                self.keys.pool_load(pool_id),
                mapping={
                    "workers": len(view.live_workers),
                    "capacity": view.capacity,
                    "in_flight": in_flight,
                    "queued": max(0, view.backlog - in_flight),
                    "updated_at": now,
                },
            )
            dead = (
                view.members
                - set(view.live_workers)
                - {p.worker_id for p in self.local.alive(pool_id)}
            )
            if dead:
                pipe.srem(self.keys.pool_workers(pool_id), *dead)
        if len(pipe):
            await pipe.execute()

    # ------------------------------------------------------------------ reclaim

    async def _reclaim(self, view: PoolView) -> None:
        """Take back entries of dead workers, and entries past their task's deadline."""
        stream = self.keys.pool_tasks(view.spec.id)
        try:
            summary = await self.redis.xpending(stream, WORKER_GROUP)
        except RedisError:
            return
        if not summary or not summary.get("pending"):
            return
        starting = {p.worker_id for p in self.local.alive(view.spec.id)}
        lost: list[tuple[bytes, str]] = []
        for consumer in summary.get("consumers") or []:
            name = text(consumer.get("name"))
            if name in view.live_workers or name in starting:
                continue
            ids = await self.redis.xpending_range(
                stream, WORKER_GROUP, min="-", max="+", count=1000, consumername=name
            )
            lost.extend((p["message_id"], f"worker {name} died") for p in ids)
            if not ids:
                await self.redis.xgroup_delconsumer(stream, WORKER_GROUP, name)
        grace_ms = int(self.settings.task_deadline_grace * 1000)
        overdue = await self.redis.xpending_range(
            stream, WORKER_GROUP, min="-", max="+", count=200, idle=grace_ms
        )
        overdue_ids = {
            p["message_id"]: p for p in overdue if p["consumer"].decode() in view.live_workers
        }
        if overdue_ids:
            pipe = self.redis.pipeline(transaction=False)
            for entry_id in overdue_ids:
                pipe.xrange(stream, min=entry_id, max=entry_id)
            for found in await pipe.execute():
                for entry_id, fields in found:
                    try:
                        msg = decode(fields)
                    except MalformedMessage:
                        continue
                    if not isinstance(msg, TaskDelegate):
                        continue
                    idle = overdue_ids[entry_id]["time_since_delivered"]
                    if idle >= (msg.task.timeout + self.settings.task_deadline_grace) * 1000:
                        who = text(overdue_ids[entry_id]["consumer"])
                        lost.append((entry_id, f"attempt passed its deadline on {who}"))
        if lost:
            await self._requeue_lost(stream, view.spec.id, lost)

    async def _requeue_lost(self, stream: str, pool_id: str, lost: list[tuple[bytes, str]]) -> None:
        reasons = dict(lost)
        claimed = await self.redis.xclaim(
            stream,
            WORKER_GROUP,
            self.id,
            min_idle_time=RECLAIM_MIN_IDLE_MS,
            message_ids=list(reasons),
        )
        pipe = self.redis.pipeline(transaction=False)
        dead: list[tuple[TaskDelegate, str]] = []
        bad: list[tuple[bytes, str, dict[bytes, bytes]]] = []
        done: list[bytes] = []
        for entry_id, fields in claimed:
            if not fields:
                done.append(entry_id)
                continue
            try:
                msg = decode(fields)
                if not isinstance(msg, TaskDelegate):
                    raise MalformedMessage(f"a {msg.type} message on a pool stream")
            except MalformedMessage as exc:
                bad.append((entry_id, str(exc), fields))
                continue
            reason = reasons.get(entry_id, "lost")
            history = [*msg.history, f"attempt {msg.attempt}: {reason}"]
            if msg.attempt >= msg.task.max_attempts:
                dead.append((msg, f"dead-lettered after {msg.attempt} attempt(s); last: {reason}"))
            else:
                again = TaskDelegate(task=msg.task, attempt=msg.attempt + 1, history=history[-20:])
                pipe.xadd(stream, encode(again))
                pipe.hset(self.keys.task(msg.task.id), "status", str(TaskStatus.QUEUED))
            done.append(entry_id)
        self._queue_malformed(pipe, stream, bad, group=WORKER_GROUP, pool_id=pool_id)
        if dead:
            await self._fail(dead, status=TaskStatus.DEAD_LETTERED, pool_id=pool_id)
        ack_and_delete(pipe, stream, WORKER_GROUP, done)
        await pipe.execute()
        if claimed:
            log.info("took back %d entr(ies) of pool %s", len(claimed), pool_id)

    async def _move_due_retries(self) -> None:
        """Move retries whose time has come from the delayed set back into the streams."""
        got = await self._scripts.acquire_lease(
            keys=[self.keys.scheduler_lease], args=[self.id, self._lease_ms]
        )
        if not got:
            return
        due = await self.redis.zrangebyscore(
            self.keys.delayed, "-inf", time.time(), start=0, num=500
        )
        if not due:
            return
        pipe = self.redis.pipeline(transaction=False)
        gone: list[tuple[TaskDelegate, str]] = []
        for member in due:
            try:
                data = unpack(member)
                fields = {
                    str(k).encode(): v if isinstance(v, bytes) else str(v).encode()
                    for k, v in data["fields"].items()
                }
                msg = decode(fields)
                pool_id = str(data.get("pool") or "")
            except (MalformedMessage, KeyError, TypeError, AttributeError):
                queue_dead_letter(
                    pipe,
                    self.settings,
                    task_id="",
                    pool_id=None,
                    reason=f"unreadable retry entry in {self.keys.delayed}",
                    raw={"member": member},
                )
                continue
            if not isinstance(msg, TaskDelegate):
                continue
            if pool_id:
                view = self.pools.get(pool_id)
                if view is None or view.status not in ACCEPTING_STATUSES:
                    gone.append((msg, f"pool {pool_id} is gone; the retry cannot run"))
                    continue
                pipe.xadd(self.keys.pool_tasks(pool_id), encode(msg))
                pipe.hset(self.keys.task(msg.task.id), "status", str(TaskStatus.QUEUED))
            else:
                pipe.xadd(self.keys.ingress, encode(msg))
                pipe.hset(self.keys.task(msg.task.id), "status", str(TaskStatus.PENDING))
        pipe.zrem(self.keys.delayed, *due)
        await pipe.execute()
        if gone:
            await self._fail(gone)

    async def _reclaim_from_dead_orchestrators(self) -> None:
        """Take over ingress and control entries held by orchestrators whose heartbeat expired."""
        for stream in (self.keys.ingress, self.keys.control):
            try:
                summary = await self.redis.xpending(stream, ORCHESTRATOR_GROUP)
            except RedisError:
                continue
            for consumer in (summary or {}).get("consumers") or []:
                name = text(consumer.get("name"))
                if name == self.id or await self.redis.exists(self.keys.orchestrator(name)):
                    continue
                ids = await self.redis.xpending_range(
                    stream, ORCHESTRATOR_GROUP, min="-", max="+", count=1000, consumername=name
                )
                if ids:
                    claimed = await self.redis.xclaim(
                        stream,
                        ORCHESTRATOR_GROUP,
                        self.id,
                        min_idle_time=RECLAIM_MIN_IDLE_MS,
                        message_ids=[p["message_id"] for p in ids],
                    )
                    entries = [(i, f) for i, f in claimed if f]
                    log.info("took over %d entr(ies) of dead orchestrator %s", len(entries), name)
                    if stream == self.keys.ingress:
                        await self.route(entries, reclaimed=True)
                    else:
                        for entry in entries:
                            await self._handle_control(entry)
                else:
                    await self.redis.xgroup_delconsumer(stream, ORCHESTRATOR_GROUP, name)


def _spawn_problem(spec: PoolSpec) -> str:
    """Why a pool cannot start on this orchestrator, or '' if it can."""
    if spec.pool_type is not PoolType.LOCAL:
        return (
            f"pool type {spec.pool_type!s} is not available yet in this version; "
            "use 'local' (alias 'mahavishnu')"
        )
    try:
        build_executor(spec)
    except ExecutorError as exc:
        return str(exc)
    return ""


async def serve(settings: Settings, *, log_dir: Path | None = None) -> int:
    """Run an orchestrator until SIGTERM/SIGINT and return a process exit code."""
    orchestrator = Orchestrator(settings, log_dir=log_dir)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, orchestrator.request_stop)
    await orchestrator.run()
    return 0
