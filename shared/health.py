"""Health from live state: the broker, the orchestrators' heartbeats, each pool's workers."""

from __future__ import annotations

import time
from typing import Any

from redis.exceptions import RedisError

from shared.config import Settings
from shared.connection import Redis, decode_hash, server_version, text
from shared.models import PoolStatus
from shared.state import live_pool_ids, read_pools


async def health_report(redis: Redis, settings: Settings) -> dict[str, Any]:
    """A health report: `healthy` overall, the broker, orchestrators and per-pool state.

    A pool is healthy when it is running and has at least one worker whose heartbeat is live.
    """
    keys = settings.keys
    try:
        version = ".".join(str(p) for p in await server_version(redis))
        broker: dict[str, Any] = {
            "ok": True,
            "url": settings.redis_url_redacted,
            "version": version,
        }
    except RedisError as exc:
        return {
            "healthy": False,
            "broker": {"ok": False, "url": settings.redis_url_redacted, "error": str(exc)},
            "orchestrators": [],
            "pools": {},
        }
    orchestrators = []
    heartbeat_prefix = keys.orchestrator("")
    async for key in redis.scan_iter(match=f"{heartbeat_prefix}*", count=200):
        beat = decode_hash(await redis.hgetall(key))
        if beat:
            orchestrators.append({"id": text(key)[len(heartbeat_prefix) :], **beat})
    pools = await read_pools(redis, settings, await live_pool_ids(redis, settings))
    now = time.time()
    report: dict[str, Any] = {}
    for pool in pools:
        members = sorted(text(m) for m in await redis.smembers(keys.pool_workers(pool.spec.id)))
        pipe = redis.pipeline(transaction=False)
        for worker_id in members:
            pipe.hgetall(keys.worker(worker_id))
        beats = [decode_hash(b) for b in await pipe.execute()] if members else []
        workers = {
            w: {
                "in_flight": int(b.get("in_flight", "0") or 0),
                "status": b.get("status", ""),
                "last_seen_s": round(now - float(b.get("last_seen", now) or now), 3),
                "host": b.get("host", ""),
                "pid": b.get("pid", ""),
            }
            for w, b in zip(members, beats, strict=True)
            if b
        }
        healthy = pool.status in (PoolStatus.RUNNING, PoolStatus.SCALING) and bool(workers)
        report[pool.spec.id] = {
            "name": pool.spec.name,
            "status": str(pool.status),
            "healthy": healthy,
            "live_workers": len(workers),
            "target_workers": pool.target_workers,
            "detail": pool.detail,
            "workers": workers,
        }
    return {
        "healthy": bool(orchestrators) and all(p["healthy"] for p in report.values()),
        "broker": broker,
        "orchestrators": orchestrators,
        "pools": report,
    }
