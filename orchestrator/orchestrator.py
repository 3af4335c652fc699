"""The control plane: route tasks, carry out control commands, supervise pools.

Any number of orchestrators share the work as members of the `orchestrators` group on the
ingress and control streams. Two loops run: the ingress loop reads tasks and control commands in
batches and routes them; the supervision loop ticks every `supervise_interval`, supervising the
pools whose lease this orchestrator holds (`supervisor.py`), moving due retries and taking over
the entries of dead orchestrators (`reclaim.py`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from orchestrator.epoch import Epoch
from orchestrator.memory.aggregator import Aggregator
from orchestrator.pools import PoolBackend, build_backends, unavailable
from orchestrator.pools.local import LocalBackend
from orchestrator.reclaim import Reclaimer
from orchestrator.records import BadEntry, Records
from orchestrator.routing import ROUTABLE_STATUSES, Candidate, Router, eligible, explain
from orchestrator.supervisor import KILL_MARGIN, PoolSupervisor, PoolView
from shared.aio import stop_loops, wait_any
from shared.codec import (
    Control,
    ControlAction,
    PoolCreated,
    StatusUpdate,
    TaskDelegate,
    decode,
)
from shared.config import Settings
from shared.connection import (
    TRANSIENT_ERRORS,
    ReadFrom,
    Redis,
    ack_and_delete,
    connect,
    ensure_group,
    read_own_pending,
)
from shared.errors import MalformedMessage
from shared.finals import announce_stored
from shared.hooks import HOOKS
from shared.keys import ORCHESTRATOR_GROUP, WORKER_GROUP
from shared.logs import bind as bind_log_context
from shared.metrics import install as install_metrics
from shared.models import ACCEPTING_STATUSES, PoolSpec, PoolStatus, PoolType, TaskStatus, new_id
from shared.replies import Entry, decode_hash, flatten_read, text
from shared.scripts import Scripts, packed_task
from shared.state import pool_hash_fields
from shared.task_state import task_state_fields
from worker.worker import drain_deadline

log = logging.getLogger("mahavishnu.orchestrator")

MAX_WAITING = 10_000
CLAIM_CHUNK = 1000  # tasks per CLAIM_ROUTE: one call must not hold Redis for long
DEFAULT_MAX_QUEUE: int = PoolSpec.model_fields["max_queue"].default
BACKLOG_MAX_AGE = 0.1  # seconds a pool's backlog is trusted without an XLEN
LOOP_STOP_WAIT = 5.0  # seconds the loops get to notice a stop before they are cancelled


@dataclass
class _Claims:
    """What CLAIM_ROUTE said of a batch: entries to move (with their pool), entries whose
    task was cancelled (with its home), final ones whose result was or was not announced."""

    to: list[tuple[_Waiting, str, int]] = field(default_factory=list)  # (item, pool, max_queue)
    cancelled: list[tuple[_Waiting, str]] = field(default_factory=list)
    unannounced: list[_Waiting] = field(default_factory=list)
    settled: list[_Waiting] = field(default_factory=list)


@dataclass
class _Waiting:
    entry_id: bytes
    message: TaskDelegate
    since: float
    fields: dict[bytes, bytes]  # the entry as read: forwarded unchanged, never re-encoded
    force: bool = False  # the pool it was claimed for refused it: it may go elsewhere


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
        self.records = Records(self.redis, self._scripts, settings, self.id)
        self.reclaimer = Reclaimer(self.records, self._lease_ms)
        self._tick_soon = asyncio.Event()  # a control command or a worker exit asks for a tick
        self.backends = build_backends(
            settings, log_dir or Path(".mahavishnu/logs"), self.id, self._tick_soon.set
        )
        self.supervisor = PoolSupervisor(
            self.records, self.reclaimer, self.backends, self._lease_ms
        )
        self.epoch = Epoch(self.records, self._lease_ms)
        self.stop_workers_on_exit = stop_workers_on_exit
        self._waiting: list[_Waiting] = []
        self._backlogs: dict[str, int] = {}  # pool -> XLEN, as last read or returned by a forward
        self._backlogs_read_at = 0.0
        self._route_lock = asyncio.Lock()
        self._tick_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._ticked = asyncio.Event()
        self.routed = 0
        self.aggregator: Aggregator | None = None
        if settings.memory_aggregation_enabled:
            self.aggregator = Aggregator(settings, self.redis, self.id)

    @property
    def pools(self) -> dict[str, PoolView]:
        """Every pool as seen at the last tick."""
        return self.supervisor.pools

    @property
    def local(self) -> LocalBackend:
        """The worker processes this orchestrator started on this host."""
        backend = self.backends[PoolType.LOCAL]
        assert isinstance(backend, LocalBackend)
        return backend

    @property
    def _lease_ms(self) -> int:
        return int(self.settings.orchestrator_lease_ttl * 1000)

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
        await self.epoch.join()
        loops = [
            asyncio.create_task(self._ingress_loop(), name="ingress"),
            asyncio.create_task(self._supervise_loop(), name="supervise"),
        ]
        if self.aggregator is not None:
            memory = self.aggregator.run(self._stopping, ready=self._ticked)
            loops.append(asyncio.create_task(memory, name="memory"))
        stopped = asyncio.create_task(self._stopping.wait())
        try:
            done, _ = await asyncio.wait([*loops, stopped], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopped and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self._stopping.set()
            stopped.cancel()
            # the loops end on `_stopping`; cancelling them is only the fallback, since
            # redis-py can swallow a cancel that lands inside a pipeline (see worker.worker)
            await stop_loops(*loops, timeout=LOOP_STOP_WAIT)
            await self._shutdown()

    async def _shutdown(self) -> None:
        if self.stop_workers_on_exit:
            # the same bound as supervision: a worker exits by itself at its drain deadline
            grace = drain_deadline(self.settings) + KILL_MARGIN
            for backend in self.backends.values():
                await backend.stop_all(grace)
        try:
            pipe = self.redis.pipeline(transaction=False)
            for pool_id in self.supervisor.owned():
                self._scripts.queue(
                    pipe, self._scripts.release_lease, [self.keys.pool_lease(pool_id)], [self.id]
                )
            pipe.delete(self.keys.orchestrator(self.id))
            await self._scripts.execute(pipe)
        except RedisError as exc:
            log.warning("could not release leases: %s", exc)
        await self._reader.aclose()
        await self.redis.aclose()

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
                    streams: ReadFrom = {self.keys.control: ">"}
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
        held = {w.entry_id for w in self._waiting}
        streams = [self.keys.control, self.keys.ingress]
        return await read_own_pending(
            self._reader, self.redis, ORCHESTRATOR_GROUP, self.id, streams, held
        )

    async def route(self, entries: list[Entry], *, reclaimed: bool = False) -> None:
        """Route a batch of ingress entries plus the tasks still waiting for a pool.

        Each entry is claimed for a pool once (CLAIM_ROUTE): entries `reclaimed` from an
        orchestrator that died go to the pool it had chosen, never to a second one.
        """
        async with self._route_lock:
            await self._route(entries)

    async def _route(self, entries: list[Entry]) -> None:
        now = time.time()
        items: list[_Waiting] = []
        bad: list[BadEntry] = []
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
        items.extend(self._waiting)
        if not items and not bad:
            return
        candidates = await self._candidates()
        serving = [c for c in candidates if c.live_workers and c.status in ROUTABLE_STATUSES]
        routed: list[tuple[_Waiting, Candidate]] = []
        waiting: list[_Waiting] = []
        expired: list[tuple[_Waiting, str]] = []
        for item in items:
            task = item.message.task
            chosen = self.router.choose(task, eligible(serving, task))
            if chosen is not None:
                routed.append((item, chosen))
            elif now - item.since >= task.queue_timeout:
                expired.append((item, explain(candidates, task)))
            else:
                waiting.append(item)
        claims = await self._claim(routed, candidates) if routed else _Claims()
        accepted = await self._forward(claims.to) if claims.to else []
        taken = {item.entry_id for item in accepted}
        refused = [item for item, _, _ in claims.to if item.entry_id not in taken]
        for item in refused:
            item.force = True
        self._waiting = waiting + refused
        pipe = self.redis.pipeline(transaction=False)
        done = [i.entry_id for i in accepted] + [i.entry_id for i in claims.settled]
        ack_and_delete(pipe, self.keys.ingress, ORCHESTRATOR_GROUP, done)
        self.records.queue_malformed(pipe, self.keys.ingress, bad)
        if len(pipe):
            await pipe.execute()
        self.routed += len(accepted)
        await self._settle(claims)
        if expired:
            await self.records.fail(
                [
                    (i.message, f"not routed within {i.message.task.queue_timeout:g}s: {why}")
                    for i, why in expired
                ],
                ack=(self.keys.ingress, ORCHESTRATOR_GROUP, [i.entry_id for i, _ in expired]),
            )

    async def _claim(
        self, routed: list[tuple[_Waiting, Candidate]], candidates: list[Candidate]
    ) -> _Claims:
        """Claim each entry for its chosen pool (or learn the pool it was claimed for): one
        CLAIM_ROUTE per CLAIM_CHUNK tasks, all in the ingress slot."""
        pipe = self.redis.pipeline(transaction=False)
        for start in range(0, len(routed), CLAIM_CHUNK):
            chunk = routed[start : start + CLAIM_CHUNK]
            args: list[Any] = [self.settings.result_ttl]
            for item, pool in chunk:
                args += [item.entry_id, pool.pool_id, "1" if item.force else "0"]
            self._scripts.queue(
                pipe,
                self._scripts.claim_route,
                [self.keys.task(item.message.task.id) for item, _ in chunk],
                args,
            )
        claims = _Claims()
        limits = {c.pool_id: c.max_queue for c in candidates}
        replies = [v for reply in await self._scripts.execute(pipe) for v in reply]
        for (item, _pool), (verdict, value) in zip(routed, replies, strict=True):
            verdict, value = text(verdict), text(value)
            if verdict == "to":  # the pool chosen now, or the one chosen for it before
                claims.to.append((item, value, limits.get(value, DEFAULT_MAX_QUEUE)))
            elif verdict == "cancelled":
                claims.cancelled.append((item, value))
            elif value != "1":  # final while it had no pool, never announced
                claims.unannounced.append(item)
            else:
                claims.settled.append(item)
        return claims

    async def _settle(self, claims: _Claims) -> None:
        """Record a cancel the client asked for but did not finish, announce results whose
        writer died, and acknowledge those entries."""
        ingress = self.keys.ingress
        if claims.cancelled:
            await self.records.fail(
                [(i.message, "cancelled before it started") for i, _ in claims.cancelled],
                status=TaskStatus.CANCELLED,
                homes=[home for _, home in claims.cancelled],
                ack=(ingress, ORCHESTRATOR_GROUP, [i.entry_id for i, _ in claims.cancelled]),
            )
        if claims.unannounced:
            await announce_stored(
                self.redis,
                self._scripts,
                self.settings,
                [("", i.message.task.id) for i in claims.unannounced],
                ack=(ingress, ORCHESTRATOR_GROUP, [i.entry_id for i in claims.unannounced]),
            )

    async def _forward(self, routed: list[tuple[_Waiting, str, int]]) -> list[_Waiting]:
        """Move claimed entries into their pools (one FORWARD per pool); return the ones the
        pools took (or had taken before: a repeated move is a no-op).

        The pool's script checks its status and backlog bound in the same step, so a pool that
        started closing or filled up since the last tick refuses (the task waits on).
        """
        by_pool: dict[str, list[_Waiting]] = {}
        limits: dict[str, int] = {}
        for item, pool_id, max_queue in routed:
            by_pool.setdefault(pool_id, []).append(item)
            limits[pool_id] = max_queue
        keys = self.keys
        pipe = self.redis.pipeline(transaction=False)
        for pool_id, items in by_pool.items():
            args: list[Any] = [limits[pool_id], self.settings.result_ttl, len(items)]
            for item in items:
                state = task_state_fields(item.message.task, pool_id=pool_id)
                state["attempts"] = str(item.message.attempt - 1)
                args.append(packed_task(item.entry_id, state, item.fields))
            self._scripts.queue(
                pipe,
                self._scripts.forward,
                [keys.pool(pool_id), keys.pool_tasks(pool_id)]
                + [keys.pool_task(pool_id, item.message.task.id) for item in items],
                args,
            )
        replies = await self._scripts.execute(pipe, raise_on_error=False)
        accepted: list[_Waiting] = []
        for (pool_id, items), reply in zip(by_pool.items(), replies, strict=True):
            if isinstance(reply, Exception):
                log.warning("forwarding to pool %s failed: %s", pool_id, reply)
                continue
            verdicts, backlog = reply
            accepted += [item for item, v in zip(items, verdicts, strict=True) if int(v)]
            self._backlogs[pool_id] = int(backlog)
            if HOOKS:
                HOOKS.routed(pool_id, sum(1 for v in verdicts if int(v) == 1))  # 1: taken now
        return accepted

    async def _candidates(self) -> list[Candidate]:
        views = [v for v in self.pools.values() if v.status in ACCEPTING_STATUSES]
        if not views:
            return []
        # only a pool that could take work needs its backlog read (an idle one costs nothing)
        serving = [v for v in views if v.serving and v.status in ROUTABLE_STATUSES]
        now = time.monotonic()
        known = self._backlogs
        if now - self._backlogs_read_at > BACKLOG_MAX_AGE or any(
            v.spec.id not in known for v in serving
        ):
            pipe = self.redis.pipeline(transaction=False)
            for view in serving:
                pipe.xlen(self.keys.pool_tasks(view.spec.id))
            replies = await pipe.execute()
            self._backlogs = known = {
                v.spec.id: int(n) for v, n in zip(serving, replies, strict=True)
            }
            self._backlogs_read_at = now
        backlogs = [known.get(v.spec.id, 0) for v in views]
        return [
            Candidate(
                pool_id=v.spec.id,
                status=v.status,
                worker_type=v.spec.worker_type,
                labels=v.spec.labels,
                live_workers=len(v.serving),
                capacity=v.capacity,
                backlog=int(b),
                max_queue=v.spec.max_queue,
            )
            for v, b in zip(views, backlogs, strict=True)
        ]

    # ------------------------------------------------------------------ control

    async def _handle_control(self, entry: Entry) -> None:
        entry_id, fields = entry
        try:
            msg = decode(fields)
            if not isinstance(msg, Control):
                raise MalformedMessage(f"a {msg.type} message does not belong on control")
        except MalformedMessage as exc:
            pipe = self.redis.pipeline(transaction=False)
            self.records.queue_malformed(pipe, self.keys.control, [(entry_id, str(exc), fields)])
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
        problem = self._spawn_problem(spec)
        now = time.time()
        if problem:
            log.warning("pool %s (%s) cannot start: %s", spec.id, spec.name, problem)
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(
                key,
                mapping=pool_hash_fields(spec, PoolStatus.FAILED, created_at=now, detail=problem),
            )
            pipe.expire(key, self.settings.result_ttl)
            self.records.publish(
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
        self.records.publish(pipe, PoolCreated(spec=spec))
        self.records.publish(pipe, StatusUpdate(pool_id=spec.id, status=PoolStatus.STARTING))
        await pipe.execute()
        log.info("created pool %s (%s, %s)", spec.id, spec.name, spec.pool_type)
        self._tick_soon.set()

    async def _scale(self, pool_id: str, workers: int) -> None:
        raw = decode_hash(await self.redis.hgetall(self.keys.pool(pool_id)))
        if raw.get("status") not in ACCEPTING_STATUSES:
            return
        spec = PoolSpec.model_validate_json(raw["spec"])
        target = max(spec.min_workers, min(spec.max_workers, workers))
        await self.records.set_pool_status(
            pool_id,
            PoolStatus.SCALING,
            f"scaling to {target}",
            expect=ACCEPTING_STATUSES,
            target_workers=target,
        )
        self._tick_soon.set()

    async def _close(self, pool_id: str) -> None:
        closable = {*ACCEPTING_STATUSES, PoolStatus.FAILED}
        if await self.records.set_pool_status(
            pool_id, PoolStatus.CLOSING, "closing", expect=closable
        ):
            self._tick_soon.set()

    def _spawn_problem(self, spec: PoolSpec) -> str:
        """Why a pool cannot start on this orchestrator, or '' if it can."""
        backend: PoolBackend | None = self.backends.get(spec.pool_type)
        return unavailable(spec.pool_type) if backend is None else backend.problem(spec)

    # -------------------------------------------------------------- supervision

    async def _supervise_loop(self) -> None:
        while not self._stopping.is_set():
            self._tick_soon.clear()
            try:
                await self.tick()
                await self._take_over_orphans()
            except TRANSIENT_ERRORS as exc:
                log.warning("supervision tick failed: %s", exc)
            except OSError as exc:  # e.g. a worker process that cannot be started
                log.error("supervision tick failed: %s", exc)
            await wait_any(
                self._stopping, self._tick_soon, timeout=self.settings.supervise_interval
            )

    async def tick(self) -> None:
        """One supervision pass over every pool (also run right after control commands)."""
        async with self._tick_lock:
            await self._tick()

    async def _tick(self) -> None:
        if await self.epoch.lost():  # before the refresh replaces the last view of the pools
            await self.epoch.restore(self.supervisor.pools)
        await self.supervisor.refresh()
        owned = self.supervisor.owned()
        pending = await self.reclaimer.pending_summaries(owned)
        for pool_id in owned:
            await self.supervisor.supervise(self.pools[pool_id], pending.get(pool_id))
        await self.supervisor.write_load()
        await self.reclaimer.due_retries({p: v.status for p, v in self.pools.items()})
        self._ticked.set()

    async def _take_over_orphans(self) -> None:
        """Route or carry out the entries of orchestrators that died (outside the tick lock)."""
        orphans = await self.reclaimer.orphaned_entries()
        for entry in orphans.get(self.keys.control, []):
            await self._handle_control(entry)
        if orphans.get(self.keys.ingress):
            await self.route(orphans[self.keys.ingress], reclaimed=True)


async def serve(settings: Settings, *, log_dir: Path | None = None) -> int:
    """Run an orchestrator until SIGTERM/SIGINT and return a process exit code."""
    metrics = install_metrics(settings, role="orchestrator")
    orchestrator = Orchestrator(settings, log_dir=log_dir)
    bind_log_context(orchestrator=orchestrator.id)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, orchestrator.request_stop)
    try:
        await orchestrator.run()
    finally:
        if metrics is not None:
            metrics.close()
    return 0
