"""Reading the state hashes: pools, their load, and tasks (final results are written by
`shared.finals`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from shared.codec import unpack
from shared.config import Settings
from shared.connection import Fields, Redis
from shared.errors import MalformedMessage
from shared.models import (
    LoadMetrics,
    PoolInfo,
    PoolSpec,
    PoolStatus,
    TaskResult,
    TaskStatus,
)
from shared.replies import decode_hash, queued, text
from shared.task_state import iso_time


def worker_draining(beat: dict[str, str]) -> bool:
    """Whether a worker's heartbeat says it is draining (it serves no new work)."""
    return beat.get("status") == "draining"


def worker_stuck(beat: dict[str, str], now: float) -> bool:
    """Whether a worker has been draining for longer than its own drain deadline."""
    if not worker_draining(beat):
        return False
    try:
        since = float(beat.get("draining_since", "0") or 0)
        limit = float(beat.get("drain_deadline", "0") or 0)
    except ValueError:
        return False
    return since > 0 and limit > 0 and now - since > limit


def pool_hash_fields(spec: PoolSpec, status: PoolStatus, **extra: Any) -> Fields:
    """The pool hash: plain readable fields plus the whole spec as JSON."""
    fields: Fields = {
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
    if "created_at" in extra:
        fields["created"] = iso_time(float(extra["created_at"]))
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
        local_workers=int(num("local_workers")),
        external_workers=int(num("external_workers")),
        draining=int(num("draining")),
        stuck=int(num("stuck")),
        capacity=int(num("capacity")),
        in_flight=int(num("in_flight")),
        queued=int(num("queued")),
        completed=completed,
        failed=int(num("failed")),
        avg_ms=round(total_ms / completed, 3) if completed else 0.0,
        updated_at=num("updated_at"),
    )


def parse_pool(
    raw: dict[str, str], load: dict[str, str], *, supervised: bool = True
) -> PoolInfo | None:
    """A PoolInfo from the pool and load hashes, or None if the pool hash is empty or unusable.

    `supervised`: whether the pool's lease is held (its supervising orchestrator is alive)."""
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
        supervised=supervised,
        restarts=int(raw.get("restarts", "0") or 0),
        last_restart_at=float(raw.get("last_restart_at", "0") or 0),
        last_restart_reason=raw.get("last_restart_reason", ""),
        remote_health=raw.get("remote_health", ""),
    )


async def read_pools(redis: Redis, settings: Settings, pool_ids: Sequence[str]) -> list[PoolInfo]:
    """The pools with these ids (missing ones are left out), in one round trip."""
    keys = settings.keys
    pipe = redis.pipeline(transaction=False)
    reads = [
        (
            queued(pipe, pipe.hgetall(keys.pool(pool_id))),
            queued(pipe, pipe.hgetall(keys.pool_load(pool_id))),
            queued(pipe, pipe.exists(keys.pool_lease(pool_id))),
        )
        for pool_id in pool_ids
    ]
    replies = await pipe.execute()
    pools = []
    for raw, load, leased in reads:
        info = parse_pool(
            decode_hash(raw.reply(replies)),
            decode_hash(load.reply(replies)),
            supervised=bool(leased.reply(replies)),
        )
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
