"""`mahavishnu top`: the snapshot of a known Redis state (pools, load, memory records at known
times, worker heartbeats of each kind, dead letters), its table, and `top --once --json` as a
process whose stdout is one JSON document."""

from __future__ import annotations

import asyncio
import io
import json
import time
from asyncio.subprocess import PIPE
from typing import Any

from redis.asyncio import Redis

from orchestrator.cli.top import top_view
from orchestrator.cli.top_data import BUCKETS, snapshot
from shared.client import PoolManager
from shared.config import Settings
from shared.models import PoolSpec, PoolStatus
from shared.state import pool_hash_fields
from tests.conftest import CLI

NOW = 1_800_000_000.0


async def known_state(redis: Redis, settings: Settings, now: float) -> None:
    """Pool `alpha` (local, 2 workers: one local, one external), pool `beta` (kubernetes, one
    pod worker), 10 finished tasks on alpha in the last minute and 1 older, 3 dead letters."""
    keys = settings.keys
    specs = [
        PoolSpec(id="alpha", name="alpha", min_workers=1),
        PoolSpec(id="beta", name="beta", pool_type="kubernetes", min_workers=1),
    ]
    for spec in specs:
        await redis.hset(
            keys.pool(spec.id),
            mapping=pool_hash_fields(spec, PoolStatus.RUNNING, created_at=1.0, target_workers=2),
        )
        await redis.sadd(keys.pools, spec.id)
    await redis.hset(
        keys.pool_load("alpha"),
        mapping={"workers": 2, "queued": 5, "in_flight": 3, "completed": 11, "failed": 1},
    )
    # one task 2 min ago, then durations 10, 20, ... 100 ms 5.5 s apart over the last minute
    old = int((now - 120) * 1000)
    await redis.xadd(keys.pool_memory("alpha"), {"duration": "9.0"}, id=f"{old}-0")
    for i in range(10):
        at_ms = int((now - 55 + i * 5.5) * 1000)
        duration = (i + 1) * 0.01
        await redis.xadd(
            keys.pool_memory("alpha"), {"duration": f"{duration:.6f}"}, id=f"{at_ms}-0"
        )
    beats = {
        "w-local": ("alpha", {"managed_by": "o-1"}, 0.5),
        "w-ext": ("alpha", {"managed_by": ""}, 3.0),
        "w-pod": ("beta", {"managed_by": "o-1", "kind": "pod"}, 1.0),
    }
    for worker_id, (pool_id, extra, age) in beats.items():
        await redis.sadd(keys.pool_workers(pool_id), worker_id)
        fields = {"pool": pool_id, "status": "running", "in_flight": "1", "completed": "4"}
        fields |= {"host": "h1", "last_seen": repr(now - age), **extra}
        await redis.hset(keys.worker(worker_id), mapping=fields)
        await redis.expire(keys.worker(worker_id), 60)
    await redis.sadd(keys.pool_workers("alpha"), "w-gone")  # no heartbeat: not shown
    for n in range(3):
        await redis.xadd(keys.dlq, {"task": f"t{n}", "reason": "out of attempts"})


async def test_snapshot_of_a_known_state(
    settings: Settings, redis: Redis, manager: PoolManager
) -> None:
    await known_state(redis, settings, NOW)
    doc = await snapshot(manager, now=NOW)
    alpha, beta = doc["pools"]
    assert (alpha["pool_id"], beta["pool_id"]) == ("alpha", "beta")
    assert alpha["finished_in_window"] == 10
    assert alpha["rate_per_s"] == round(10 / 60, 3)
    assert alpha["p50_ms"] == 50.0 and alpha["p99_ms"] == 100.0
    assert alpha["queued"] == 5 and alpha["in_flight"] == 3 and alpha["completed"] == 11
    assert len(alpha["p50_spark"]) == BUCKETS and alpha["p99_spark"].rstrip()[-1] == "█"
    assert beta["finished_in_window"] == 0 and beta["p50_spark"] == " " * BUCKETS
    workers = {w["worker_id"]: w for w in doc["workers"]}
    assert set(workers) == {"w-local", "w-ext", "w-pod"}
    assert [workers[w]["kind"] for w in ("w-local", "w-ext", "w-pod")] == [
        "local",
        "external",
        "pod",
    ]
    assert workers["w-ext"]["heartbeat_age_s"] == 3.0
    assert doc["dead_letters"] == 3
    assert doc["memory_sync_lag_s"] is None and doc["orchestrators"] == 0
    rendered = _render(top_view(doc))
    assert "memory-sync lag n/a" in rendered and "dead letters 3" in rendered
    assert "w-pod" in rendered and "external" in rendered


def _render(view: Any) -> str:
    from rich.console import Console

    console = Console(width=200, record=True, file=io.StringIO())
    console.print(view)
    return console.export_text()


async def test_top_once_json_is_one_json_document(settings: Settings, redis: Redis) -> None:
    await known_state(redis, settings, time.time())
    # the settings fixture put this test's settings (URL, prefix) into the environment
    proc = await asyncio.create_subprocess_exec(
        CLI, "top", "--once", "--json", stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    doc = json.loads(out)  # the whole of stdout is the document
    assert [p["pool_id"] for p in doc["pools"]] == ["alpha", "beta"]
    assert doc["pools"][0]["finished_in_window"] == 10
    assert doc["dead_letters"] == 3 and len(doc["workers"]) == 3
