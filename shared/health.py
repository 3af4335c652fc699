"""Health from live state: the broker, the orchestrators' heartbeats, each pool's workers."""

from __future__ import annotations

import time
from typing import Any

from redis.exceptions import RedisError

from shared.config import Settings
from shared.connection import Redis, server_version
from shared.models import PoolStatus
from shared.replies import decode_hash, queued, text
from shared.state import live_pool_ids, read_pools, worker_draining, worker_stuck


async def health_report(redis: Redis, settings: Settings) -> dict[str, Any]:
    """A health report: `healthy` overall, the broker, orchestrators and per-pool state.

    A pool is healthy when an orchestrator supervises it, it is running (or scaling), as many
    workers serve (live heartbeat, not draining) as its target asks, and none is stuck draining
    past its drain deadline; each unhealthy pool lists its problems. Overall health also needs a
    live orchestrator, and reports when Redis lost its data (`data_lost_at`).
    """
    keys = settings.keys
    try:
        version = ".".join(str(p) for p in await server_version(redis))
        broker: dict[str, Any] = {
            "ok": True,
            "url": settings.redis_url_redacted,
            "version": version,
        }
        epoch = decode_hash(await redis.hgetall(keys.epoch))
        if epoch.get("lost_at"):
            broker["data_lost_at"] = float(epoch["lost_at"])
            broker["data_lost"] = epoch.get("lost", "")
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
        reads = [queued(pipe, pipe.hgetall(keys.worker(worker_id))) for worker_id in members]
        replies = await pipe.execute() if members else []
        beats = [decode_hash(read.reply(replies)) for read in reads]
        beats_by_id = dict(zip(members, beats, strict=True))
        workers = {
            w: {
                "in_flight": int(b.get("in_flight", "0") or 0),
                "status": b.get("status", ""),
                "last_seen_s": round(now - float(b.get("last_seen", now) or now), 3),
                "host": b.get("host", ""),
                "pid": b.get("pid", ""),
                "external": not b.get("managed_by"),
            }
            for w, b in zip(members, beats, strict=True)
            if b
        }
        draining = [w for w in workers if worker_draining(beats_by_id[w])]
        serving = [w for w in workers if w not in draining]
        stuck = [w for w in draining if worker_stuck(beats_by_id[w], now)]
        external = [w for w in serving if not beats_by_id[w].get("managed_by")]
        target = pool.target_workers
        problems = []
        if not pool.supervised:
            problems.append("no orchestrator supervises it (its lease is free)")
        if pool.status not in (PoolStatus.RUNNING, PoolStatus.SCALING):
            problems.append(f"it is {pool.status}")
        if len(serving) < max(target, 1 if target else 0):
            problems.append(f"{len(serving)} of {target} workers serve")
        if stuck:
            problems.append(f"{len(stuck)} worker(s) stuck draining: {', '.join(stuck)}")
        report[pool.spec.id] = {
            "name": pool.spec.name,
            "status": pool.shown_status,
            "healthy": not problems,
            "problems": problems,
            "serving": len(serving),
            "live_workers": len(serving),
            "target_workers": target,
            "external": len(external),
            "draining": len(draining),
            "stuck": len(stuck),
            "supervised": pool.supervised,
            "restarts": pool.restarts,
            "last_restart_at": pool.last_restart_at or None,
            "last_restart_reason": pool.last_restart_reason or None,
            "detail": pool.detail,
            "workers": workers,
        }
    return {
        "healthy": bool(orchestrators) and all(p["healthy"] for p in report.values()),
        "broker": broker,
        "orchestrators": orchestrators,
        "pools": report,
    }
