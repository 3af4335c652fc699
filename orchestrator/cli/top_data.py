"""What `mahavishnu top` shows, read from Redis in one snapshot (a JSON-ready dict).

Per pool: status, workers, backlog and in flight (the load hash), and from its memory stream
(the record of every finished task; entry ids are times) the finished tasks of the last
`window` seconds: rate per second, p50/p99 duration and their sparklines over `buckets` slices.
Overall: dead letters (XLEN of the dead-letter stream), orchestrators alive, memory-sync lag,
and every pool's workers with their heartbeat age and kind.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from shared.connection import Redis, decode_hash, text
from shared.models import PoolInfo, PoolType

WINDOW = 60.0
BUCKETS = 12
SAMPLE = 2000  # newest memory records read per pool
SPARK = "▁▂▃▄▅▆▇█"

WORKER_KINDS = ("local", "external", "pod", "remote")


async def memory_sync_lag(redis: Redis, settings: Any) -> float | None:
    """Seconds the memory sync lags (the age of the oldest record a destination has not
    stored yet, the largest over destinations), or None while memory sync is off (n/a)."""
    if not settings.memory_aggregation_enabled:
        return None
    from orchestrator.memory.stats import memory_report

    pool_ids = sorted(text(m) for m in await redis.smembers(settings.keys.memory_sync_pools))
    totals, _ = await memory_report(redis, settings, pool_ids)
    return max((d.lag_s for d in totals.values()), default=0.0)


def worker_kind(heartbeat: dict[str, str], pool_type: str) -> str:
    """local (started by an orchestrator on its host), external (started by hand), pod (runs in
    Kubernetes) or remote (a delegated pool's workers): the heartbeat's `kind` when it names one
    (`worker.worker.heartbeat_kind`), else from the pool's type and `managed_by`."""
    named = heartbeat.get("kind", "")
    if named in WORKER_KINDS:
        return named
    if pool_type == PoolType.DELEGATED:
        return "remote"
    if pool_type == PoolType.KUBERNETES:
        return "pod"
    return "local" if heartbeat.get("managed_by") else "external"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of `values` by nearest rank; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


def sparkline(series: Sequence[float | None], top: float) -> str:
    """One character per value, scaled to `top`; a blank for a slice with no tasks."""
    if top <= 0:
        return "".join(" " if v is None else SPARK[0] for v in series)
    steps = len(SPARK) - 1
    return "".join(" " if v is None else SPARK[min(steps, round(v / top * steps))] for v in series)


def _finished(entries: Sequence[Any]) -> list[tuple[float, float]]:
    """(finished at, duration ms) of memory records (the entry id's time as the finish)."""
    out: list[tuple[float, float]] = []
    for entry_id, fields in entries:
        try:
            at = int(text(entry_id).split("-", 1)[0]) / 1000
            duration = float(text(fields.get(b"duration")) or 0) * 1000
        except ValueError:
            continue
        out.append((at, duration))
    return out


def pool_figures(
    finished: list[tuple[float, float]], now: float, capped: bool, window: float, buckets: int
) -> dict[str, Any]:
    """Rate, p50/p99 and their sparklines from the finished tasks of the last `window` s."""
    recent = [(at, ms) for at, ms in finished if now - window <= at <= now + 1]
    span = window
    if capped and recent:  # the sample ends before the window starts: rate over the sample
        span = max(now - min(at for at, _ in recent), 1e-3)
    durations = [ms for _, ms in recent]
    width = window / buckets
    slices: list[list[float]] = [[] for _ in range(buckets)]
    for at, ms in recent:
        index = min(buckets - 1, max(0, int((at - (now - window)) / width)))
        slices[index].append(ms)
    p50s = [percentile(s, 0.5) if s else None for s in slices]
    p99s = [percentile(s, 0.99) if s else None for s in slices]
    top = max((v for v in p99s if v is not None), default=0.0)
    return {
        "finished_in_window": len(recent),
        "rate_per_s": round(len(recent) / span, 3),
        "p50_ms": round(percentile(durations, 0.5), 3),
        "p99_ms": round(percentile(durations, 0.99), 3),
        "p50_series_ms": [None if v is None else round(v, 3) for v in p50s],
        "p99_series_ms": [None if v is None else round(v, 3) for v in p99s],
        "p50_spark": sparkline(p50s, top),
        "p99_spark": sparkline(p99s, top),
    }


async def snapshot(
    pools: Any, *, window: float = WINDOW, buckets: int = BUCKETS, now: float | None = None
) -> dict[str, Any]:
    """Everything `top` shows, from the Redis of `pools` (a PoolManager)."""
    redis: Redis = pools.redis
    settings = pools.settings
    keys = settings.keys
    now = time.time() if now is None else now
    found: list[PoolInfo] = sorted(await pools.list_pools(), key=lambda p: p.spec.name)
    pipe = redis.pipeline(transaction=False)
    for info in found:
        pipe.xrevrange(keys.pool_memory(info.spec.id), count=SAMPLE)
        pipe.smembers(keys.pool_workers(info.spec.id))
    replies = await pipe.execute() if found else []
    members = [sorted(text(m) for m in replies[2 * i + 1]) for i in range(len(found))]
    pipe = redis.pipeline(transaction=False)
    for workers in members:
        for worker_id in workers:
            pipe.hgetall(keys.worker(worker_id))
    pipe.xlen(keys.dlq)
    beats = await pipe.execute()
    dead_letters = int(beats.pop())
    docs, workers_doc, beat_iter = [], [], iter(beats)
    for i, info in enumerate(found):
        entries = replies[2 * i]
        figures = pool_figures(_finished(entries), now, len(entries) >= SAMPLE, window, buckets)
        load = info.load
        docs.append(
            {
                "pool_id": info.spec.id,
                "name": info.spec.name,
                "pool_type": str(info.spec.pool_type),
                "worker_type": str(info.spec.worker_type),
                "status": info.shown_status,
                "workers": load.workers,
                "target_workers": info.target_workers,
                "queued": load.queued,
                "in_flight": load.in_flight,
                "completed": load.completed,
                "failed": load.failed,
                **figures,
            }
        )
        for worker_id in members[i]:
            beat = decode_hash(next(beat_iter))
            if not beat:
                continue  # no heartbeat: dead, about to be pruned
            last_seen = float(beat.get("last_seen") or 0)
            workers_doc.append(
                {
                    "worker_id": worker_id,
                    "pool_id": info.spec.id,
                    "kind": worker_kind(beat, str(info.spec.pool_type)),
                    "status": beat.get("status", ""),
                    "host": beat.get("host", ""),
                    "in_flight": int(beat.get("in_flight") or 0),
                    "completed": int(beat.get("completed") or 0),
                    "heartbeat_age_s": round(max(0.0, now - last_seen), 3),
                }
            )
    return {
        "at": now,
        "window_s": window,
        "pools": docs,
        "workers": workers_doc,
        "dead_letters": dead_letters,
        "orchestrators": len(await pools.orchestrators()),
        "memory_sync_lag_s": await memory_sync_lag(redis, settings),
    }
