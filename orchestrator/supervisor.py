"""Pool supervision: the view of every pool, and what the pool's lease holder does each tick.

Each pool is supervised by the one orchestrator holding its lease (a key with a TTL, renewed
every tick); when that orchestrator dies the lease expires and another adopts the pool. The
holder reconciles local worker processes with the pool's target (and autoscales), moves the
pool's status, writes its load hash, takes back lost entries, and finishes closing it.

Who counts: a worker *serves* when its heartbeat is live and it is not draining. The pool's
target counts only the processes this orchestrator started (`local`); workers it did not start
(another host, a container, an orphan of a dead orchestrator) are `external`: they add capacity
and are never stopped. A draining worker counts for neither; one still draining past its drain
deadline is `stuck`, and a local one is killed.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.pools import PoolBackend
from orchestrator.reclaim import Reclaimer
from orchestrator.records import Records
from shared.codec import PoolClosed, StatusUpdate, TaskDelegate, decode, encode
from shared.connection import Fields
from shared.errors import MalformedMessage
from shared.finals import announce_stored
from shared.hooks import HOOKS, PoolFigures
from shared.keys import WORKER_GROUP
from shared.models import ACCEPTING_STATUSES, PoolSpec, PoolStatus, PoolType, TaskStatus
from shared.replies import decode_hash, queued, stream_entries, text
from shared.state import worker_draining, worker_stuck
from shared.task_state import iso_time
from worker.worker import drain_deadline

log = logging.getLogger("mahavishnu.orchestrator")

AUTOSCALE_COOLDOWN = 10.0
KILL_MARGIN = 5.0  # seconds past a worker's own drain deadline before its supervisor kills it


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
    local: set[str] = field(default_factory=set)  # workers the pool's backend started and has
    failed: str = ""  # why the backend cannot run the pool, as of the last sweep
    degraded: str = ""  # why its workers cannot do their work, as of the last sweep

    @property
    def serving(self) -> dict[str, dict[str, str]]:
        """Live workers that are not draining."""
        return {w: b for w, b in self.live_workers.items() if not worker_draining(b)}

    @property
    def serving_local(self) -> int:
        """Serving workers that the supervisor started."""
        return sum(1 for w in self.serving if w in self.local)

    @property
    def external(self) -> int:
        """Serving workers that the supervisor did not start."""
        return sum(1 for w in self.serving if w not in self.local)

    @property
    def draining(self) -> int:
        """Live workers that are draining."""
        return sum(1 for b in self.live_workers.values() if worker_draining(b))

    def stuck(self, now: float) -> int:
        """Live workers draining past their own drain deadline."""
        return sum(1 for b in self.live_workers.values() if worker_stuck(b, now))

    @property
    def capacity(self) -> int:
        """Sum of the serving workers' concurrency."""
        return sum(_count(w, "concurrency") for w in self.serving.values())

    @property
    def in_flight(self) -> int:
        """Sum of the live workers' running tasks."""
        return sum(_count(w, "in_flight") for w in self.live_workers.values())

    @property
    def target(self) -> int:
        """The number of workers the pool should have."""
        return int(self.raw.get("target_workers", self.spec.min_workers) or 0)


class PoolSupervisor:
    """Keeps the view of all pools and supervises the ones whose lease this orchestrator holds."""

    def __init__(
        self,
        records: Records,
        reclaimer: Reclaimer,
        backends: dict[PoolType, PoolBackend],
        lease_ms: int,
    ) -> None:
        self.records = records
        self.reclaimer = reclaimer
        self.backends = backends
        self.redis = records.redis
        self.settings = records.settings
        self.keys = records.keys
        self.owner_id = records.owner_id
        self.lease_ms = lease_ms
        self.pools: dict[str, PoolView] = {}
        self._low_backlog_since: dict[str, float] = {}
        self._closing_since: dict[str, float] = {}

    def owned(self) -> list[str]:
        """Ids of the pools whose lease this orchestrator holds."""
        return [p for p, v in self.pools.items() if v.lease == self.owner_id]

    async def refresh(self) -> None:
        """Heartbeat; read every pool, its lease, workers and backlog; take free leases."""
        keys = self.keys
        pipe = self.redis.pipeline(transaction=False)
        beat: Fields = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "last_seen": repr(time.time()),
        }
        pipe.hset(keys.orchestrator(self.owner_id), mapping=beat)
        pipe.pexpire(keys.orchestrator(self.owner_id), self.lease_ms)
        pools = queued(pipe, pipe.smembers(keys.pools))
        ids = sorted(text(m) for m in pools.reply(await pipe.execute()))
        pipe = self.redis.pipeline(transaction=False)
        reads = {}
        for pool_id in ids:
            raw = queued(pipe, pipe.hgetall(keys.pool(pool_id)))
            members = queued(pipe, pipe.smembers(keys.pool_workers(pool_id)))
            backlog = queued(pipe, pipe.xlen(keys.pool_tasks(pool_id)))
            self.records.scripts.queue(
                pipe,
                self.records.scripts.acquire_lease,
                [keys.pool_lease(pool_id)],
                [self.owner_id, self.lease_ms],
            )
            lease = queued(pipe, pipe.get(keys.pool_lease(pool_id)))
            reads[pool_id] = (raw, members, backlog, lease)
        replies = await self.records.scripts.execute(pipe)
        views: dict[str, PoolView] = {}
        for pool_id, (raw, members, backlog, lease) in reads.items():
            fields = decode_hash(raw.reply(replies))
            try:
                spec = PoolSpec.model_validate_json(fields["spec"])
                status = PoolStatus(fields.get("status", "failed"))
            except (KeyError, ValueError):
                continue
            views[pool_id] = PoolView(
                spec=spec,
                status=status,
                raw=fields,
                lease=text(lease.reply(replies)),
                members={text(m) for m in members.reply(replies)},
                backlog=backlog.reply(replies),
            )
        pipe = self.redis.pipeline(transaction=False)
        order = [(pool_id, w) for pool_id, v in views.items() for w in sorted(v.members)]
        beats = [queued(pipe, pipe.hgetall(keys.worker(worker_id))) for _, worker_id in order]
        replies = await pipe.execute() if order else []
        for (pool_id, worker_id), beat_read in zip(order, beats, strict=True):
            if worker_beat := decode_hash(beat_read.reply(replies)):
                views[pool_id].live_workers[worker_id] = worker_beat
        self.pools = views

    async def supervise(self, view: PoolView, pending: Mapping[str, Any] | None) -> None:
        """One pass over a pool this orchestrator holds the lease of (`pending`: its task
        stream's `XPENDING` summary, read for all pools at once)."""
        pool_id = view.spec.id
        if view.status is PoolStatus.CLOSING:
            await self._finish_close(view)
            return
        if view.status not in ACCEPTING_STATUSES:
            return
        backend = self.backends.get(view.spec.pool_type)
        if backend is None:  # a type this version cannot run (refused at spawn): leave it be
            return
        await self._sweep(view, backend)
        starting = backend.active(pool_id)
        await self.reclaimer.pool_entries(pool_id, set(view.live_workers) | starting, pending)
        if view.failed:
            backend.stop(pool_id)
            await self._set_status(view, PoolStatus.FAILED, view.failed)
            await self._requeue_leftovers(pool_id)  # its queued tasks must not wait forever
            return
        target = self._autoscale(view)
        if target != view.target:
            await self.redis.hset(self.keys.pool(pool_id), "target_workers", str(target))
            view.raw["target_workers"] = str(target)
        await backend.reconcile(view.spec, target)
        view.local = backend.managed(pool_id)
        status = self._wanted_status(view)
        if view.degraded and status is PoolStatus.RUNNING:
            status = PoolStatus.DEGRADED
        await self._set_status(view, status, view.degraded)

    async def _sweep(self, view: PoolView, backend: PoolBackend) -> None:
        """Forget exited workers at once (their heartbeats and entries with them), kill those
        draining past their deadline, and record why a worker had to be restarted."""
        pool_id = view.spec.id
        found = backend.sweep(
            pool_id, set(view.live_workers), drain_deadline(self.settings) + KILL_MARGIN
        )
        view.local = backend.managed(pool_id)
        view.failed = found.failed
        view.degraded = found.degraded
        if not found.exited and not found.restart_reason:
            return
        pipe = self.redis.pipeline(transaction=False)
        for worker_id in found.exited:
            view.live_workers.pop(worker_id, None)
            view.members.discard(worker_id)
            pipe.delete(self.keys.worker(worker_id))
            pipe.srem(self.keys.pool_workers(pool_id), worker_id)
        if found.restart_reason:
            reason = found.restart_reason[:500]
            restart: Fields = {"last_restart_at": repr(time.time()), "last_restart_reason": reason}
            pipe.hset(self.keys.pool(pool_id), mapping=restart)
            pipe.hincrby(self.keys.pool(pool_id), "restarts", 1)
        await pipe.execute()

    @staticmethod
    def _wanted_status(view: PoolView) -> PoolStatus:
        target = view.target
        serving = view.serving_local  # the target counts only the backend's own workers
        anyone = len(view.serving)  # external workers serve the pool too
        if view.status is PoolStatus.SCALING and (serving > 0 or target == 0):
            return PoolStatus.RUNNING if serving == target else PoolStatus.SCALING
        if serving >= max(target, 1) or target == 0:  # a pool scaled to zero runs, idle
            return PoolStatus.RUNNING
        if view.status is PoolStatus.STARTING and not anyone:
            return PoolStatus.STARTING
        return PoolStatus.DEGRADED if anyone == 0 else PoolStatus.RUNNING

    async def _set_status(self, view: PoolView, status: PoolStatus, detail: str) -> None:
        if status is view.status:
            return
        detail = detail or _workers_detail(view)
        if await self.records.set_pool_status(view.spec.id, status, detail, expect=[view.status]):
            view.status = status

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
        return target

    async def _finish_close(self, view: PoolView) -> None:
        """Once the pool's workers have drained, re-route or fail what is left, then close."""
        pool_id = view.spec.id
        backend = self.backends.get(view.spec.pool_type)
        if backend is not None:
            backend.stop(pool_id)
        since = self._closing_since.setdefault(pool_id, time.monotonic())
        limit = self.settings.drain_grace + self.settings.heartbeat_ttl + 5
        still = (backend.running(pool_id) if backend else 0) or view.live_workers
        if still and time.monotonic() - since < limit:
            return
        if backend is not None:
            backend.kill(pool_id)
        await self._requeue_leftovers(pool_id)
        keys = self.keys
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(
            keys.pool_tasks(pool_id),
            keys.pool_load(pool_id),
            keys.pool_workers(pool_id),
            keys.pool_inbox(pool_id),
        )
        closed: Fields = {"status": str(PoolStatus.CLOSED), "closed_at": repr(time.time())}
        pipe.hset(keys.pool(pool_id), mapping=closed)
        pipe.expire(keys.pool(pool_id), self.settings.result_ttl)
        pipe.expire(keys.pool_memory(pool_id), self.settings.result_ttl)  # searchable a while
        pipe.srem(keys.pools, pool_id)
        update = StatusUpdate(pool_id=pool_id, status=PoolStatus.CLOSED, detail="closed")
        self.records.publish(pipe, update)
        self.records.publish(pipe, PoolClosed(pool_id=pool_id, reason="closed on request"))
        self.records.scripts.queue(
            pipe, self.records.scripts.release_lease, [keys.pool_lease(pool_id)], [self.owner_id]
        )
        await self.records.scripts.execute(pipe)
        self._closing_since.pop(pool_id, None)
        if backend is not None:
            backend.forget(pool_id)
        self.pools.pop(pool_id, None)
        log.info("closed pool %s", pool_id)

    async def _requeue_leftovers(self, pool_id: str) -> None:
        """Re-route a closed pool's routed tasks (and direct ones with `reroute_on_close`);
        fail the other direct ones with the reason."""
        stream = self.keys.pool_tasks(pool_id)
        start = "-"
        while True:
            entries = stream_entries(await self.redis.xrange(stream, min=start, max="+", count=500))
            if not entries:
                return
            start = "(" + text(entries[-1][0])
            pipe = self.redis.pipeline(transaction=False)
            failures: list[tuple[TaskDelegate, str]] = []
            routed: list[TaskDelegate] = []
            readable: list[TaskDelegate] = []
            for entry_id, fields in entries:
                try:
                    msg = decode(fields)
                    if not isinstance(msg, TaskDelegate):
                        raise MalformedMessage(f"a {msg.type} message on a pool stream")
                except MalformedMessage as exc:
                    bad = [(entry_id, str(exc), fields)]
                    self.records.queue_malformed(
                        pipe, stream, bad, group=WORKER_GROUP, pool_id=pool_id
                    )
                    continue
                readable.append(msg)
            finished = await self.records.finished(pool_id, readable)
            unannounced = [(pool_id, t) for t, announced in finished.items() if not announced]
            for msg in readable:
                if msg.task.id in finished:  # its result is recorded (its ack was lost)
                    continue
                if msg.task.pool_id and not msg.task.reroute_on_close:
                    failures.append((msg, f"pool {pool_id} closed before the task ran"))
                elif msg.task.pool_id:  # allowed to run elsewhere: routed like any other
                    task = msg.task.model_copy(update={"pool_id": None})
                    routed.append(msg.model_copy(update={"task": task}))
                else:
                    routed.append(msg)
            if failures:
                await self.records.fail(failures, pool_id=pool_id)
            if unannounced:
                await announce_stored(self.redis, self.records.scripts, self.settings, unannounced)
            for msg in routed:
                pipe.xadd(self.keys.ingress, encode(msg))
                self.records.scripts.set_task(
                    pipe, self.keys.pool_task(pool_id, msg.task.id), status=TaskStatus.PENDING
                )
            pipe.xdel(stream, *[entry_id for entry_id, _ in entries])  # handled: never twice
            await self.records.scripts.execute(pipe)

    async def write_load(self) -> None:
        """Write the load hash of every owned pool; forget workers that are gone."""
        pipe = self.redis.pipeline(transaction=False)
        moment = time.time()
        now, updated = repr(moment), iso_time(moment)
        owned = self.owned()
        for pool_id in owned:
            view = self.pools[pool_id]
            in_flight = view.in_flight
            if HOOKS:
                pipe.hmget(self.keys.pool_load(pool_id), ["completed", "failed"])
            pipe.hset(
                self.keys.pool_load(pool_id),
                mapping={
                    "workers": len(view.serving),
                    "local_workers": view.serving_local,
                    "external_workers": view.external,
                    "draining": view.draining,
                    "stuck": view.stuck(time.time()),
                    "capacity": view.capacity,
                    "in_flight": in_flight,
                    "queued": max(0, view.backlog - in_flight),
                    "updated_at": now,
                    "updated": updated,
                },
            )
            backend = self.backends.get(view.spec.pool_type)
            starting = backend.active(pool_id) if backend else set()
            dead = view.members - set(view.live_workers) - starting
            if dead:
                pipe.srem(self.keys.pool_workers(pool_id), *dead)
        replies = await pipe.execute() if len(pipe) else []
        if HOOKS:
            counters = [r for r in replies if isinstance(r, list)]  # the HMGETs, in order
            HOOKS.pools(
                [
                    _figures(self.pools[pool_id], completed, failed)
                    for pool_id, (completed, failed) in zip(owned, counters, strict=True)
                ]
            )


def _figures(view: PoolView, completed: Any, failed: Any) -> PoolFigures:
    """What the `pools` hook is told of a pool this orchestrator supervises."""
    return PoolFigures(
        pool=view.spec.id,
        status=view.status.value,
        backlog=view.backlog,
        in_flight=view.in_flight,
        local_workers=view.serving_local,
        external_workers=view.external,
        draining=view.draining,
        capacity=view.capacity,
        completed=int(float(text(completed) or 0)),
        failed=int(float(text(failed) or 0)),
    )


def _count(beat: dict[str, str], field: str) -> int:
    """A count from a heartbeat; 0 when missing or unreadable (a foreign or damaged worker
    must not break the supervision of every pool)."""
    try:
        return max(0, int(beat.get(field) or 0))
    except ValueError:
        return 0


def _workers_detail(view: PoolView) -> str:
    """E.g. "2/2 workers", "2/2 workers + 1 external", with draining ones named."""
    text_ = f"{view.serving_local}/{view.target} workers"
    if view.external:
        text_ += f" + {view.external} external"
    if view.draining:
        text_ += f", {view.draining} draining"
    return text_
