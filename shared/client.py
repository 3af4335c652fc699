"""The async client API: the original's `PoolManager` surface, working over Redis from any process.

    async with PoolManager() as pools:
        pool_id = await pools.spawn_pool("local", name="demo", min_workers=2)
        result = await pools.execute_on_pool(pool_id, {"prompt": "hello"})

Tasks are written straight into a pool's stream (`execute_on_pool`, `submit(pool_id=...)`) or
into the ingress stream for the orchestrators to route (`route_task`, `submit()`). Results come
back on this client's own reply stream, read by one blocking reader for all outstanding tasks.
Pool changes go to the control stream; the orchestrators carry them out and announce them on
the events stream, which this client waits on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from pydantic import ValidationError
from redis.exceptions import ResponseError

from shared.codec import (
    Control,
    ControlAction,
    Message,
    PoolClosed,
    PoolCreated,
    ResultShare,
    StatusUpdate,
    decode,
    describe_validation_error,
    encode,
    encode_task,
    pack,
)
from shared.config import Settings, load_settings
from shared.connection import Redis, connect
from shared.dead_letters import DeadLetter, list_dead_letters, read_dead_letter
from shared.errors import (
    InvalidRequest,
    MalformedMessage,
    OrchestratorUnavailable,
    PoolNotFound,
    PoolUnavailable,
    QueueFull,
    ResultTimeout,
    TaskNotFound,
    inbox_error,
    state_lost,
)
from shared.finals import announce_stored
from shared.hooks import HOOKS, ROUTED
from shared.idempotency import claim_keys
from shared.memory import SearchOutcome, search_memory
from shared.models import (
    PoolInfo,
    PoolSpec,
    PoolStatus,
    PoolType,
    RoutingStrategy,
    TaskResult,
    TaskSpec,
    TaskStatus,
    new_id,
    parse_pool_type,
)
from shared.readers import CompletionWatcher, ReplyReader
from shared.remote_config import DEFAULT_REMOTE_CONCURRENCY, RemoteKind
from shared.replies import Queued, decode_hash, flatten_read, stream_entries, text
from shared.scripts import Scripts, add_counted, flat_fields, packed_task
from shared.state import live_pool_ids, parse_task_result, read_pools
from shared.task_state import iso_time, read_state, task_state_fields
from shared.waits import WaitGuard, live_workers

log = logging.getLogger("mahavishnu.client")

TaskInput = TaskSpec | Mapping[str, Any]
DEFAULT_MAX_QUEUE: int = PoolSpec.model_fields["max_queue"].default
FOREIGN_RECHECK = 5.0  # seconds between looks at the hash of a task waited on via events
SUBMIT_CHUNK = 1000  # tasks per submit script: one call must not hold Redis for long


def make_task(task: TaskInput, *, settings: Settings | None = None, **overrides: Any) -> TaskSpec:
    """Validate a task given as a TaskSpec or a mapping; raise InvalidRequest naming the field.

    The one place task defaults are applied: a mapping that leaves out `timeout` or
    `max_attempts` gets the `settings`' `task_default_timeout` / `task_max_attempts` (every entry
    point passes its settings: the client, the CLI, the MCP tools). A TaskSpec is taken as built.
    """
    try:
        if isinstance(task, TaskSpec):
            if not overrides:
                return task
            # its fields as they are (a TaskSpec keeps them in __dict__), not a dump of them
            return TaskSpec.model_validate({**task.__dict__, **overrides})
        data = dict(task)
        if settings is not None:
            data.setdefault("timeout", settings.task_default_timeout)
            data.setdefault("max_attempts", settings.task_max_attempts)
        return TaskSpec.model_validate({**data, **overrides})
    except ValidationError as exc:
        raise InvalidRequest(f"invalid task: {describe_validation_error(exc)}") from None


def _is_delegated(pool_type: str | None, given: Mapping[str, Any]) -> bool:
    """Whether a spec being built is of a delegated pool (unknown types: no, the spec says)."""
    name = pool_type if pool_type is not None else given.get("pool_type")
    try:
        return isinstance(name, str) and parse_pool_type(name) is PoolType.DELEGATED
    except ValueError:
        return False


def make_pool_spec(
    pool_type: str | None, config: PoolSpec | Mapping[str, Any] | None, **fields: Any
) -> PoolSpec:
    """Validate a pool spec; raise InvalidRequest naming the field and the bad value."""
    data: dict[str, Any] = {}
    if isinstance(config, PoolSpec):
        data = config.model_dump()
    elif config is not None:
        data = dict(config)
    data.update({k: v for k, v in fields.items() if v is not None})
    if pool_type is not None:
        data["pool_type"] = pool_type
    data.setdefault("name", new_id("pool"))
    data.pop("pool_id", None)
    try:
        return PoolSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid pool spec: {describe_validation_error(exc)}") from None


class PoolManager:
    """Spawn pools, submit tasks and wait for results, from any process, over Redis."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        client_id: str | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self.keys = self.settings.keys
        self.client_id = client_id or new_id("c")
        self.redis: Redis = connect(self.settings)
        self._reader_redis: Redis = connect(self.settings, blocking=True)
        self._scripts = Scripts(self.redis)
        self._replies = ReplyReader(self._reader_redis, self.keys.replies(self.client_id))
        self._events_redis: Redis = connect(self.settings, blocking=True)
        self._completions = CompletionWatcher(self._events_redis, self.keys.events)
        self._guard = WaitGuard(self.redis, self.settings)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the reply reader and close the connections."""
        await self._replies.aclose()
        await self._completions.aclose()
        await self._guard.aclose()
        await self._events_redis.aclose()
        await self._reader_redis.aclose()
        await self.redis.aclose()

    # ---------------------------------------------------------------- tasks

    async def submit(
        self,
        task: TaskInput,
        *,
        pool_id: str | None = None,
        expect_reply: bool = True,
    ) -> str:
        """Queue a task without waiting; return its id (the first id for a known idempotency key).

        With `pool_id` (or a task that names one) the task goes straight to that pool's stream;
        otherwise into the ingress stream to be routed. Raises QueueFull when the target is at
        its bound, PoolNotFound / PoolUnavailable for a pool that cannot take it,
        IdempotencyConflict when its idempotency key names a different request (see
        `shared.idempotency` for what counts as the same). A routed task is queued even when no
        orchestrator is running (`orchestrators()` tells): it waits in the ingress for one.
        """
        ids = await self.submit_many([task], pool_id=pool_id, expect_reply=expect_reply)
        return ids[0]

    async def submit_many(
        self,
        tasks: Iterable[TaskInput],
        *,
        pool_id: str | None = None,
        expect_reply: bool = True,
    ) -> list[str]:
        """Queue several tasks in one round trip; return their ids in order.

        All or nothing when an idempotency key conflicts: two entries with one key are one task
        if they are the same request, an IdempotencyConflict otherwise.
        """
        overrides: dict[str, Any] = {"reply_to": self.client_id} if expect_reply else {}
        if pool_id is not None:
            overrides["pool_id"] = pool_id
        specs = [make_task(t, settings=self.settings, **overrides) for t in tasks]
        known = await claim_keys(self.redis, self.keys, specs, self.settings.result_ttl)
        fresh = [s for s in specs if known.get(s.idempotency_key or "", s.id) == s.id]
        failures = await self._submit_batches(fresh)
        if failures:
            await self._undo_submits([spec for spec, _ in failures])
            spec, error = failures[0]
            raise self._submit_error(spec, error, len(failures), len(fresh))
        if expect_reply:
            for spec in fresh:
                self._replies.expect(spec.id)
        return [known.get(s.idempotency_key or "", s.id) for s in specs]

    async def _submit_batches(self, specs: list[TaskSpec]) -> list[tuple[TaskSpec, Exception]]:
        """Queue tasks with one script per target stream (per `SUBMIT_CHUNK` tasks), all or
        nothing for each target; return the tasks not queued, with the reason.

        The first call for a target checks that all of its tasks fit; the rest of a long
        submission follows in a second round trip, only for targets that took the first.
        """
        targets: dict[str | None, list[TaskSpec]] = {}
        for spec in specs:
            targets.setdefault(spec.pool_id, []).append(spec)
        heads = [(pool_id, group[:SUBMIT_CHUNK], len(group)) for pool_id, group in targets.items()]
        failures = await self._submit_calls(heads)
        refused = {spec.id: error for spec, error in failures}
        rest: list[tuple[str | None, list[TaskSpec], int]] = []
        for pool_id, group in targets.items():
            error = refused.get(group[0].id)
            if error is not None:  # none of this target's tasks are queued
                failures += [(spec, error) for spec in group[SUBMIT_CHUNK:]]
                continue
            for start in range(SUBMIT_CHUNK, len(group), SUBMIT_CHUNK):
                chunk = group[start : start + SUBMIT_CHUNK]
                rest.append((pool_id, chunk, len(chunk)))
        return failures + await self._submit_calls(rest)

    async def _submit_calls(
        self, calls: list[tuple[str | None, list[TaskSpec], int]]
    ) -> list[tuple[TaskSpec, Exception]]:
        """One `SUBMIT_BATCH` per (target pool or None for ingress, tasks, room needed), and
        each task's `task` hash (`shared/task_state.py`), in one round trip; the tasks of the
        calls that failed (their `task` hashes are removed by `_undo_submits`)."""
        if not calls:
            return []
        keys, ttl = self.keys, self.settings.result_ttl
        pipe = self.redis.pipeline(transaction=False)
        submits: list[tuple[list[TaskSpec], Queued[object]]] = []
        for pool_id, chunk, need in calls:
            args: list[Any]
            if pool_id:
                head = [keys.pool(pool_id), keys.pool_tasks(pool_id)]
                state_keys = [keys.pool_task(pool_id, spec.id) for spec in chunk]
                args = ["pool", DEFAULT_MAX_QUEUE]
            else:  # a routed task's state is its look-up hash until it is routed
                head = [keys.ingress, keys.ingress]
                state_keys = [keys.task(spec.id) for spec in chunk]
                args = ["ingress", self.settings.ingress_max_len]
            args += [ttl, need, len(chunk)]
            for spec in chunk:
                args.append(
                    packed_task("", task_state_fields(spec, pool_id=pool_id), encode_task(spec))
                )
            submit = self._scripts.queue(pipe, self._scripts.submit_batch, head + state_keys, args)
            submits.append((chunk, submit))
        lookups: list[Any] = [ttl, 0]
        lookup_keys: list[str] = []
        for pool_id, chunk, _ in calls:
            if pool_id:  # the look-ups of direct tasks: one script for all of them
                for spec in chunk:
                    lookup_keys.append(keys.task(spec.id))
                    add_counted(lookups, {"home": pool_id})
        init = None
        if lookup_keys:
            lookups[1] = len(lookup_keys)
            init = self._scripts.queue(pipe, self._scripts.init_batch, lookup_keys, lookups)
        replies = await self._scripts.execute(pipe, raise_on_error=False)
        if HOOKS:
            for (pool_id, chunk, _), (_, submit) in zip(calls, submits, strict=True):
                if not isinstance(submit.reply_or_error(replies), Exception):
                    HOOKS.submitted(pool_id or ROUTED, len(chunk))
        if init is not None and isinstance(error := init.reply_or_error(replies), Exception):
            # the tasks are queued and will run; only finding them by id will fail
            log.error(
                "the look-ups of %d direct task(s) were not written: %s", len(lookup_keys), error
            )
        return [
            (spec, reply)
            for chunk, submit in submits
            if isinstance(reply := submit.reply_or_error(replies), Exception)
            for spec in chunk
        ]

    async def _undo_submits(self, specs: Sequence[TaskSpec]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for spec in specs:
            pipe.delete(self.keys.task(spec.id))
            if spec.idempotency_key:
                pipe.delete(self.keys.idempotency(spec.idempotency_key))
        await pipe.execute()

    def _submit_error(self, spec: TaskSpec, error: Exception, failed: int, total: int) -> Exception:
        message = str(error)
        what = f"pool {spec.pool_id!r}" if spec.pool_id else "the ingress stream"
        count = f" ({failed} of {total} tasks not queued)" if total > 1 else ""
        if "QUEUEFULL" in message:
            return QueueFull(f"queue full: {what} is at its limit{count}; retry later")
        if "NOPOOL" in message:
            return PoolNotFound(f"no pool with id {spec.pool_id!r}{count}")
        if "POOLDOWN" in message:
            status = message.rsplit(" ", 1)[-1]
            return PoolUnavailable(f"pool {spec.pool_id!r} is {status} and takes no tasks{count}")
        return error if isinstance(error, ResponseError) else RuntimeError(message)

    async def result(self, task_id: str, timeout: float | None = None) -> TaskResult:
        """Wait for a final result; raise ResultTimeout (the task goes on) or TaskNotFound.

        A wait that cannot end stops early: OrchestratorNotRunning (at once, or within a few
        seconds of the last orchestrator's heartbeat expiring) when the task waits for an
        orchestrator and none is alive (the task goes on and is routed once one starts),
        TaskStateLost within a few seconds of the task's record vanishing from Redis.
        """
        fut = self._replies.awaiting(task_id)
        if fut is None:
            return await self._wait_foreign(task_id, timeout)
        if not fut.done():
            guard = self._guard.watch(task_id)
            try:
                await asyncio.wait(
                    (fut, guard), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                self._guard.unwatch(task_id, guard)
            if not fut.done():
                if guard.done():
                    raise guard.result()
                current = await self._status_while_waiting(task_id)
                if not current.status.is_final:
                    raise ResultTimeout(
                        f"task {task_id} is still {current.status} after {timeout}s", task_id
                    )
                self._replies.forget(task_id)
                return current
        res = fut.result()
        self._replies.forget(task_id)
        return res

    async def _wait_foreign(self, task_id: str, timeout: float | None) -> TaskResult:
        """Wait for a task this client did not submit: its TASK_COMPLETED event, or its hash."""
        completed = await self._completions.watch(task_id)  # before the check: none slips by
        current = await self.status(task_id)  # TaskNotFound: never submitted, or expired
        guard = self._guard.watch(task_id)
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not current.status.is_final:
                left = FOREIGN_RECHECK
                if deadline is not None:
                    left = min(left, deadline - time.monotonic())
                    if left <= 0:
                        raise ResultTimeout(
                            f"task {task_id} is still {current.status} after {timeout}s", task_id
                        )
                # the events stream is trimmed, so the hash is looked at again now and then
                seen = asyncio.ensure_future(completed.wait())
                try:
                    await asyncio.wait(
                        (seen, guard), timeout=left, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    seen.cancel()
                if guard.done():
                    raise guard.result()
                current = await self._status_while_waiting(task_id)
            return current
        finally:
            self._guard.unwatch(task_id, guard)
            self._completions.unwatch(task_id, completed)

    async def _status_while_waiting(self, task_id: str) -> TaskResult:
        """The state of a task known to exist: TaskStateLost if its record is gone."""
        try:
            return await self.status(task_id)
        except TaskNotFound:
            raise state_lost(task_id) from None

    async def orchestrators(self) -> list[str]:
        """Ids of the orchestrators alive now (none: routed tasks wait in the ingress)."""
        return await self._guard.orchestrators()

    async def live_workers(self, pool_id: str) -> int:
        """How many of the pool's workers have a live heartbeat."""
        return (await live_workers(self.redis, self.settings, [pool_id]))[pool_id]

    async def status(self, task_id: str) -> TaskResult:
        """The task's current state (its final result once it has one); TaskNotFound if unknown."""
        found = await read_state(self.redis, self.keys, task_id)
        if found is None:
            raise TaskNotFound(f"no task with id {task_id!r} (never submitted, or expired)")
        return parse_task_result(found[1], task_id)

    async def execute_on_pool(
        self, pool_id: str, task: TaskInput, timeout: float | None = None
    ) -> TaskResult:
        """Run a task on one pool and wait for its final result."""
        task_id = await self.submit(task, pool_id=pool_id)
        return await self.result(task_id, timeout)

    async def route_task(
        self,
        task: TaskInput,
        pool_selector: RoutingStrategy | str | None = None,
        timeout: float | None = None,
    ) -> TaskResult:
        """Let the orchestrators pick the pool (by `pool_selector`) and wait for the result."""
        overrides: dict[str, Any] = {}
        if pool_selector is not None:
            overrides["strategy"] = pool_selector
        task_id = await self.submit(make_task(task, settings=self.settings, **overrides))
        return await self.result(task_id, timeout)

    async def execute_batch(
        self,
        tasks: Sequence[TaskInput],
        *,
        pool_id: str | None = None,
        timeout: float | None = None,
    ) -> list[TaskResult]:
        """Submit tasks in one round trip and wait for all of their results, in order."""
        ids = await self.submit_many(tasks, pool_id=pool_id)
        return list(await asyncio.gather(*(self.result(i, timeout) for i in ids)))

    async def cancel(self, task_id: str) -> TaskStatus:
        """Cancel a task: a queued one never starts, a running one has its executor stopped.

        Returns the status the task had when asked (a final status means nothing changed).
        """
        home = await self._scripts.mark_cancel(keys=[self.keys.task(task_id)])
        if home is None:
            raise TaskNotFound(f"no task with id {task_id!r} (never submitted, or expired)")
        state_key = self.keys.task_state(task_id, text(home))
        now = time.time()
        before = text(
            await self._scripts.cancel_task(
                keys=[state_key], args=[repr(now), self.settings.result_ttl, iso_time(now)]
            )
        )
        if before == "moving":  # being moved into its pool, which finds the cancel there
            return TaskStatus.PENDING
        status = TaskStatus(before)
        if status in (TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.RETRYING):
            raw = await self.redis.hgetall(state_key)
            fields = decode_hash(raw)
            result = TaskResult(
                task_id=task_id,
                pool_id=fields.get("pool") or None,
                status=TaskStatus.CANCELLED,
                error="cancelled before it started",
                attempts=int(fields.get("attempts", "0") or 0),
                finished_at=time.time(),
            )
            # the task is final now; store the result, then announce it like any writer
            await self.redis.hset(state_key, "result", pack(result.model_dump(mode="json")))
            await announce_stored(self.redis, self._scripts, self.settings, [(text(home), task_id)])
        return status

    # ---------------------------------------------------------------- pools

    def pool_spec(
        self,
        pool_type: str | None = None,
        config: PoolSpec | Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> PoolSpec:
        """A validated pool spec, with this deployment's defaults for what is not given.

        The defaults are `default_pool_type`, `pool_default_min_workers`,
        `pool_default_max_workers` (raised to min_workers if that is larger) and
        `worker_concurrency`. A PoolSpec passed as `config` is taken as it is.
        """
        if isinstance(config, PoolSpec):
            return make_pool_spec(pool_type, config, **fields)
        given = {**(config or {}), **{k: v for k, v in fields.items() if v is not None}}
        if pool_type is None and "pool_type" not in given:
            pool_type = str(self.settings.default_pool_type)
        defaults = {
            "min_workers": self.settings.pool_default_min_workers,
            "max_workers": self.settings.pool_default_max_workers,
            "concurrency": self.settings.worker_concurrency,
        }
        low = given.get("min_workers")
        if isinstance(low, int):
            defaults["max_workers"] = max(defaults["max_workers"], low)
        missing: dict[str, Any] = {n: v for n, v in defaults.items() if n not in given}
        if _is_delegated(pool_type, given):
            # a delegated pool's concurrency is its remote's (3 unless given); without a remote
            # it delegates to the Session-Buddy of the session_buddy_pool_url setting
            missing["concurrency"] = DEFAULT_REMOTE_CONCURRENCY
            if not given.get("remote"):
                missing["remote"] = {
                    "url": self.settings.session_buddy_pool_url,
                    "kind": RemoteKind.SESSION_BUDDY,
                }
            missing = {name: value for name, value in missing.items() if name not in given}
        return make_pool_spec(pool_type, config, **{**fields, **missing})

    async def spawn_pool(
        self,
        pool_type: str | None = None,
        config: PoolSpec | Mapping[str, Any] | None = None,
        *,
        wait: bool = True,
        timeout: float | None = None,
        **fields: Any,
    ) -> str:
        """Ask the orchestrators for a new pool; return its id once it runs (if `wait`).

        Raises InvalidRequest for a bad spec, OrchestratorUnavailable when no orchestrator acts
        in time, PoolUnavailable when the pool failed to start (with the reason).
        """
        spec = self.pool_spec(pool_type, config, **fields)
        last = await self._last_event_id()
        await self._control(Control(action=ControlAction.SPAWN, pool_id=spec.id, spec=spec))
        if not wait:
            return spec.id
        await self._await_pool(spec.id, last, _is(PoolStatus.RUNNING), timeout, "spawn")
        return spec.id

    async def scale(self, pool_id: str, workers: int, *, wait: bool = False) -> None:
        """Set a pool's target number of workers (bounded by its min and max)."""
        info = await self.get_pool(pool_id)
        if not info.spec.min_workers <= workers <= info.spec.max_workers:
            raise InvalidRequest(
                f"workers={workers} is outside pool {pool_id!r}'s bounds "
                f"[{info.spec.min_workers}, {info.spec.max_workers}]"
            )
        last = await self._last_event_id()
        await self._control(Control(action=ControlAction.SCALE, pool_id=pool_id, workers=workers))
        if wait:

            def scaled(info: PoolInfo) -> bool:
                return info.target_workers == workers and info.status is PoolStatus.RUNNING

            await self._await_pool(pool_id, last, scaled, None, "scale")

    async def close_pool(
        self, pool_id: str, *, wait: bool = True, timeout: float | None = None
    ) -> None:
        """Close a pool: its workers drain and stop; tasks still queued are re-routed or failed."""
        await self.get_pool(pool_id)
        last = await self._last_event_id()
        await self._control(Control(action=ControlAction.CLOSE, pool_id=pool_id))
        if wait:
            await self._await_pool(pool_id, last, _is(PoolStatus.CLOSED), timeout, "close")

    async def close_all(self, *, wait: bool = True, timeout: float | None = None) -> list[str]:
        """Close every live pool; return their ids."""
        ids = await live_pool_ids(self.redis, self.settings)
        await asyncio.gather(*(self.close_pool(i, wait=wait, timeout=timeout) for i in ids))
        return ids

    async def list_pools(self) -> list[PoolInfo]:
        """Every live pool with its spec, status and load."""
        return await read_pools(
            self.redis, self.settings, await live_pool_ids(self.redis, self.settings)
        )

    async def get_pool(self, pool_id: str) -> PoolInfo:
        """One pool; PoolNotFound if no pool has this id."""
        pools = await read_pools(self.redis, self.settings, [pool_id])
        if not pools:
            raise PoolNotFound(f"no pool with id {pool_id!r}")
        return pools[0]

    async def health_check(self) -> dict[str, Any]:
        """Per-pool health from live heartbeats, plus the broker's and the orchestrators' state."""
        from shared.health import health_report

        return await health_report(self.redis, self.settings)

    async def aggregate_results(self, pool_ids: Sequence[str] | None = None) -> dict[str, Any]:
        """Totals across pools (completed, failed, in flight, queued, mean latency) and per pool."""
        pools = await self.list_pools()
        if pool_ids is not None:
            pools = [p for p in pools if p.spec.id in set(pool_ids)]
        completed = sum(p.load.completed for p in pools)
        weighted = sum(p.load.avg_ms * p.load.completed for p in pools)
        return {
            "pools": len(pools),
            "completed": completed,
            "failed": sum(p.load.failed for p in pools),
            "in_flight": sum(p.load.in_flight for p in pools),
            "queued": sum(p.load.queued for p in pools),
            "avg_ms": round(weighted / completed, 3) if completed else 0.0,
            "by_pool": {p.spec.id: p.load.model_dump() for p in pools},
        }

    async def send_to_pool(
        self, pool_id: str, result: TaskResult, *, from_pool: str | None = None
    ) -> str:
        """Share a result with a pool's inbox (RESULT_SHARE); InboxFull when it is full.

        The pool's workers file shared results in its memory stream, where memory search finds
        them.
        """
        fields = flat_fields(dict(encode(ResultShare(result=result, from_pool=from_pool))))
        try:
            entry = await self._scripts.send_to_inbox(
                keys=[self.keys.pool(pool_id), self.keys.pool_inbox(pool_id)], args=["", *fields]
            )
        except ResponseError as exc:
            raise inbox_error(pool_id, exc) from None
        return text(entry)

    # ---------------------------------------------------- memory and dead letters

    async def search_memory(
        self, query: str, *, limit: int = 100, pool_ids: Sequence[str] | None = None
    ) -> SearchOutcome:
        """Search finished tasks' memory records across pools, best match first (BM25).

        Searches every live pool unless `pool_ids` names some (closed pools keep their memory).
        """
        return await search_memory(self.redis, self.settings, query, limit=limit, pool_ids=pool_ids)

    async def dead_letters(
        self, *, limit: int = 50, pool_id: str | None = None
    ) -> tuple[int, list[DeadLetter]]:
        """The dead-letter stream's length and its newest `limit` entries (of one pool)."""
        return await list_dead_letters(self.redis, self.settings, limit=limit, pool_id=pool_id)

    async def requeue_dead_letter(
        self, entry_id: str, *, pool_id: str | None = None
    ) -> tuple[DeadLetter, str]:
        """Re-submit a dead letter's task as a new task, delete the entry; return the new id.

        The task goes to `pool_id` if given, else where the original was sent. Concurrent
        requeues of one entry submit one task. InvalidRequest explains one that cannot be.
        """
        letter = await read_dead_letter(self.redis, self.settings, entry_id)
        if letter.message is None:
            raise InvalidRequest(f"dead letter {entry_id} cannot be requeued: {letter.problem}")
        original = letter.message.task
        task = original.model_copy(
            update={
                "id": new_id("t"),
                "submitted_at": time.time(),
                "idempotency_key": f"dlq-requeue:{entry_id}",
                "reply_to": None,
            }
        )
        task_id = await self.submit(task, pool_id=pool_id or original.pool_id, expect_reply=False)
        await self.redis.xdel(self.keys.dlq, entry_id)
        return letter, task_id

    # ---------------------------------------------------------------- events

    async def _control(self, command: Control) -> None:
        await self.redis.xadd(self.keys.control, encode(command))

    async def _last_event_id(self) -> bytes:
        last = stream_entries(await self.redis.xrevrange(self.keys.events, count=1))
        return last[0][0] if last else b"0-0"

    async def _wait_event(
        self,
        accept: Callable[[Message, dict[bytes, bytes]], bool],
        timeout: float | None,
        since: bytes,
    ) -> tuple[Message, bytes] | None:
        """Read the events stream after `since` until `accept` says yes; None on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            block = 5000
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                block = max(1, min(block, int(left * 1000)))
            reply = await self._reader_redis.xread(
                {self.keys.events: since}, count=500, block=block
            )
            for _, (entry_id, fields) in flatten_read(reply):
                since = entry_id
                try:
                    msg = decode(fields)
                except MalformedMessage:
                    continue
                if accept(msg, fields):
                    return msg, entry_id

    async def _await_pool(
        self,
        pool_id: str,
        since: bytes,
        reached: Callable[[PoolInfo], bool],
        timeout: float | None,
        action: str,
    ) -> None:
        """Wait, on the events stream, until the pool's state satisfies `reached`."""
        limit = timeout if timeout is not None else self.settings.spawn_timeout
        seen_orchestrator = False

        def accept(msg: Message, fields: dict[bytes, bytes]) -> bool:
            nonlocal seen_orchestrator
            if isinstance(msg, PoolCreated) and msg.spec.id == pool_id:
                seen_orchestrator = True
            elif isinstance(msg, StatusUpdate | PoolClosed) and msg.pool_id == pool_id:
                seen_orchestrator = True
                return True
            return False

        deadline = time.monotonic() + limit
        while True:
            pools = await read_pools(self.redis, self.settings, [pool_id])
            if pools and reached(pools[0]):
                return
            if pools and pools[0].status is PoolStatus.FAILED:
                raise PoolUnavailable(f"pool {pool_id!r} failed to {action}: {pools[0].detail}")
            if pools and pools[0].status is PoolStatus.CLOSED:
                raise PoolUnavailable(f"pool {pool_id!r} is closed")
            left = deadline - time.monotonic()
            if left <= 0:
                break
            found = await self._wait_event(accept, left, since)
            if found is None:
                break
            since = found[1]
        if not seen_orchestrator and not pools:
            raise OrchestratorUnavailable(
                f"no orchestrator acted on '{action}' for pool {pool_id!r} within {limit:g}s; "
                "is `mahavishnu orchestrator` (or `mahavishnu up`) running? The command stays "
                "queued and runs when one starts."
            )
        state = pools[0].status if pools else "unknown"
        detail = f" ({pools[0].detail})" if pools and pools[0].detail else ""
        raise PoolUnavailable(
            f"pool {pool_id!r} did not finish '{action}' within {limit:g}s; it is {state}{detail}"
        )


def _is(status: PoolStatus) -> Callable[[PoolInfo], bool]:
    def reached(info: PoolInfo) -> bool:
        return info.status is status

    return reached
