"""Reading and writing the state hashes: pools, their load, tasks and final results.

Writers of a final result (a worker, an orchestrator that dead-letters or gives up routing) go
through `finalize_results`, so every final result is recorded once per task id and announced the
same way: task hash, the caller's reply stream, a TASK_COMPLETED event, a memory record and the
pool's counters. A client cancelling a queued task makes it final in one script
(`CANCEL_TASK`) and then announces it with `announce`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.codec import ResultShare, TaskCompleted, encode, pack, unpack
from shared.config import Settings
from shared.connection import Redis, decode_hash, text
from shared.errors import MalformedMessage
from shared.models import (
    LoadMetrics,
    PoolInfo,
    PoolSpec,
    PoolStatus,
    TaskResult,
    TaskSpec,
    TaskStatus,
)
from shared.scripts import Scripts, flat_fields

ACCEPTING_STATUSES = frozenset(
    {PoolStatus.STARTING, PoolStatus.RUNNING, PoolStatus.DEGRADED, PoolStatus.SCALING}
)


def pool_hash_fields(spec: PoolSpec, status: PoolStatus, **extra: Any) -> dict[str, str]:
    """The pool hash: plain readable fields plus the whole spec as JSON."""
    fields = {
        "id": spec.id,
        "name": spec.name,
        "type": str(spec.pool_type),
        "worker_type": str(spec.worker_type),
        "min_workers": str(spec.min_workers),
        "max_workers": str(spec.max_workers),
        "concurrency": str(spec.concurrency),
        "max_queue": str(spec.max_queue),
        "inbox_max": str(spec.inbox_max),
        "labels": json.dumps(spec.labels, sort_keys=True),
        "auto_scale": "1" if spec.auto_scale else "0",
        "status": str(status),
        "spec": spec.model_dump_json(),
    }
    fields.update({k: str(v) for k, v in extra.items()})
    return fields


def parse_load(raw: dict[str, str]) -> LoadMetrics:
    """Load metrics from a `load` hash (missing fields are zero)."""

    def num(name: str) -> float:
        try:
            return float(raw.get(name, 0) or 0)
        except ValueError:
            return 0.0

    completed = int(num("completed"))
    total_ms = num("total_ms")
    return LoadMetrics(
        workers=int(num("workers")),
        capacity=int(num("capacity")),
        in_flight=int(num("in_flight")),
        queued=int(num("queued")),
        completed=completed,
        failed=int(num("failed")),
        avg_ms=round(total_ms / completed, 3) if completed else 0.0,
        updated_at=num("updated_at"),
    )


def parse_pool(raw: dict[str, str], load: dict[str, str]) -> PoolInfo | None:
    """A PoolInfo from the pool and load hashes, or None if the pool hash is empty or unusable."""
    if not raw or "spec" not in raw:
        return None
    try:
        spec = PoolSpec.model_validate_json(raw["spec"])
        status = PoolStatus(raw.get("status", "failed"))
    except ValueError:
        return None
    return PoolInfo(
        spec=spec,
        status=status,
        created_at=float(raw.get("created_at", 0) or 0),
        target_workers=int(raw.get("target_workers", spec.min_workers) or 0),
        load=parse_load(load),
        detail=raw.get("detail", ""),
    )


async def read_pools(redis: Redis, settings: Settings, pool_ids: Sequence[str]) -> list[PoolInfo]:
    """The pools with these ids (missing ones are left out), in one round trip."""
    keys = settings.keys
    pipe = redis.pipeline(transaction=False)
    for pool_id in pool_ids:
        pipe.hgetall(keys.pool(pool_id))
        pipe.hgetall(keys.pool_load(pool_id))
    replies = await pipe.execute()
    pools = []
    for i in range(0, len(replies), 2):
        info = parse_pool(decode_hash(replies[i]), decode_hash(replies[i + 1]))
        if info is not None:
            pools.append(info)
    return pools


async def live_pool_ids(redis: Redis, settings: Settings) -> list[str]:
    """Ids in the live-pools set, sorted."""
    members = await redis.smembers(settings.keys.pools)
    return sorted(text(m) for m in members)


def parse_task_result(raw: dict[bytes, bytes] | dict[str, str], task_id: str) -> TaskResult:
    """The task's result from its hash: the stored final result, or its current state."""
    fields = {text(k): v for k, v in raw.items()}
    stored = fields.get("result")
    if stored is not None:
        try:
            data = unpack(stored if isinstance(stored, bytes) else stored.encode())
            return TaskResult.model_validate(data)
        except (MalformedMessage, ValueError):
            pass
    status_text = text(fields.get("status"), "pending")
    try:
        status = TaskStatus(status_text)
    except ValueError:
        status = TaskStatus.PENDING
    return TaskResult(
        task_id=task_id,
        pool_id=text(fields.get("pool")) or None,
        worker_id=text(fields.get("worker")) or None,
        status=status,
        attempts=int(text(fields.get("attempts"), "0") or 0),
        started_at=float(text(fields.get("started_at"), "0") or 0) or None,
        error=text(fields.get("error")) or None,
    )


@dataclass
class FinalResult:
    """A final result to record, with what is needed to announce it."""

    result: TaskResult
    reply_to: str | None = None
    summary: str = ""
    tags: list[str] = field(default_factory=list)
    token: str = ""  # the writer's id for this delivery: a retried write is recognised
    history: list[str] = field(default_factory=list)  # one line per failed attempt
    spec: TaskSpec | None = None  # kept in a dead letter, so it can be requeued


async def finalize_results(
    redis: Redis,
    scripts: Scripts,
    settings: Settings,
    finals: Sequence[FinalResult],
    *,
    extra: Any = None,
) -> list[bool]:
    """Record final results once per task id and announce the ones that were new.

    Two round trips for the whole batch: the guarded writes of the task hashes, then the
    replies, events, memory records, counters and dead letters of the results that were
    recorded now.
    `extra(pipe)`, if given, queues more commands on the second pipeline (the caller's acks).
    Returns, per result, whether it was recorded now (False: the task was already final).
    """
    keys = settings.keys
    pipe = redis.pipeline(transaction=False)
    for final in finals:
        res = final.result
        fields = {
            "status": str(res.status),
            "result": pack(res.model_dump(mode="json")),
            "finished_at": repr(res.finished_at or time.time()),
            "attempts": str(res.attempts),
        }
        if res.pool_id:
            fields["pool"] = res.pool_id
        if res.worker_id:
            fields["worker"] = res.worker_id
        if res.error:
            fields["error"] = res.error[:2000]
        scripts.queue(
            pipe,
            scripts.finalize_task,
            [keys.task(res.task_id)],
            [settings.result_ttl, final.token, *flat_fields(fields)],
        )
    written = [bool(x) for x in await scripts.execute(pipe)] if finals else []
    pipe = redis.pipeline(transaction=False)
    fresh = [final for final, new in zip(finals, written, strict=True) if new]
    announce(pipe, settings, fresh)
    for final in fresh:
        if final.result.status is TaskStatus.DEAD_LETTERED:
            queue_dead_letter(
                pipe,
                settings,
                task_id=final.result.task_id,
                pool_id=final.result.pool_id,
                reason=final.result.error or "",
                attempts=final.result.attempts,
                history=final.history,
                spec=final.spec,
            )
        pipe.hset(keys.task(final.result.task_id), "announced", "1")
    if extra is not None:
        extra(pipe)
    if len(pipe):
        await scripts.execute(pipe)
    return written


def announce(pipe: Any, settings: Settings, finals: Sequence[FinalResult]) -> None:
    """Queue the replies, TASK_COMPLETED events, memory records and pool counters of results.

    Per result: its reply, its event and its memory record. Per batch: one EXPIRE per reply
    stream and one counter update per pool.
    """
    keys = settings.keys
    reply_streams: set[str] = set()
    counts: dict[str, list[float]] = {}  # pool -> [completed, total_ms, failed]
    for final in finals:
        res = final.result
        if final.reply_to:
            reply_key = keys.replies(final.reply_to)
            reply_streams.add(reply_key)
            pipe.xadd(reply_key, encode(ResultShare(result=res, from_pool=res.pool_id)))
        event = TaskCompleted(
            task_id=res.task_id,
            pool_id=res.pool_id,
            worker_id=res.worker_id,
            status=res.status,
            duration=res.duration,
        )
        pipe.xadd(keys.events, encode(event), maxlen=settings.events_max_len, approximate=True)
        if res.pool_id:
            queue_memory_record(pipe, settings, final, pool_id=res.pool_id)
            count = counts.setdefault(res.pool_id, [0, 0.0, 0])
            if res.status is TaskStatus.COMPLETED:
                count[0] += 1
                count[1] += res.duration * 1000.0
            elif res.status in (TaskStatus.FAILED, TaskStatus.DEAD_LETTERED):
                count[2] += 1
    for reply_key in reply_streams:
        pipe.expire(reply_key, settings.reply_ttl)
    for pool_id, (completed, total_ms, failed) in counts.items():
        load_key = keys.pool_load(pool_id)
        if completed:
            pipe.hincrby(load_key, "completed", int(completed))
            pipe.hincrbyfloat(load_key, "total_ms", total_ms)
        if failed:
            pipe.hincrby(load_key, "failed", int(failed))


def queue_dead_letter(
    pipe: Any,
    settings: Settings,
    *,
    task_id: str,
    pool_id: str | None,
    reason: str,
    attempts: int = 0,
    raw: dict[Any, Any] | None = None,
    history: list[str] | None = None,
    spec: TaskSpec | None = None,
) -> None:
    """Queue one dead-letter record (the task, its pool, why, and the raw entry if unreadable)."""
    record: dict[str, str | bytes] = {
        "task": task_id,
        "pool": pool_id or "",
        "reason": reason,
        "attempts": str(attempts),
        "at": repr(time.time()),
    }
    if raw is not None:
        record["raw"] = pack({text(k): v for k, v in raw.items()})
    if history:
        record["history"] = json.dumps(history)
    if spec is not None:
        record["spec"] = spec.model_dump_json()
    pipe.xadd(settings.keys.dlq, record, maxlen=settings.dlq_max_len, approximate=True)


def queue_memory_record(pipe: Any, settings: Settings, final: FinalResult, *, pool_id: str) -> None:
    """Queue a memory record of a result (what was asked, a bounded output) on a pool's stream."""
    res = final.result
    output = res.output if isinstance(res.output, str) else json.dumps(res.output, default=str)
    limit = settings.memory_output_chars
    record = {
        "task": res.task_id,
        "pool": res.pool_id or pool_id,
        "worker": res.worker_id or "",
        "status": str(res.status),
        "prompt": final.summary,
        "output": output[:limit],
        "error": (res.error or "")[:limit],
        "duration": f"{res.duration:.6f}",
        "finished_at": repr(res.finished_at or time.time()),
        "tags": ",".join(final.tags),
    }
    pipe.xadd(
        settings.keys.pool_memory(pool_id), record, maxlen=settings.memory_max_len, approximate=True
    )
