"""Orchestrators: sharing the ingress, adopting pools of a dead peer, autoscaling, bad control."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from orchestrator.orchestrator import Orchestrator
from shared.client import PoolManager
from shared.config import Settings
from tests.conftest import wait_until


async def start(
    settings: Settings, tmp_path: Path, name: str
) -> tuple[Orchestrator, asyncio.Task[None]]:
    orch = Orchestrator(settings, orchestrator_id=name, log_dir=tmp_path / name)
    task = asyncio.create_task(orch.run())
    await orch.wait_ready()
    return orch, task


async def test_two_orchestrators_share_the_ingress_and_route_each_task_once(
    settings: Settings, tmp_path: Path, manager: PoolManager, redis: aioredis.Redis
) -> None:
    first, first_task = await start(settings, tmp_path, "o-first")
    second, second_task = await start(settings, tmp_path, "o-second")
    try:
        await manager.spawn_pool("local", name="p", min_workers=2)
        ids: list[str] = []
        for batch in range(10):
            ids += await manager.submit_many(
                [{"call": "add", "args": [batch, i]} for i in range(40)]
            )
        results = [await manager.result(i, timeout=30) for i in ids]
        assert all(r.ok for r in results)
        assert first.routed + second.routed == len(ids)
        assert await redis.xlen(settings.keys.ingress) == 0
    finally:
        for orch, task in ((first, first_task), (second, second_task)):
            orch.request_stop()
            await task


async def test_a_surviving_orchestrator_adopts_the_pools_of_a_dead_one(
    settings: Settings, tmp_path: Path, manager: PoolManager
) -> None:
    doomed, doomed_task = await start(settings, tmp_path, "o-doomed")
    pool_id = await manager.spawn_pool("local", name="p", min_workers=1)
    survivor, survivor_task = await start(settings, tmp_path, "o-survivor")
    try:
        assert (await manager.get_pool(pool_id)).status.value == "running"

        # a crash: the loops stop without releasing leases; its worker processes live on
        async def crash() -> None:
            await doomed._reader.aclose()
            await doomed.redis.aclose()

        doomed._shutdown = crash  # type: ignore[method-assign]
        doomed_task.cancel()
        await asyncio.gather(doomed_task, return_exceptions=True)

        async def adopted() -> bool:
            await survivor.tick()
            view = survivor.pools.get(pool_id)
            return view is not None and view.lease == survivor.id

        await wait_until(adopted, timeout=20, what="the survivor to take the pool's lease")
        result = await manager.route_task({"prompt": "after failover"}, timeout=15)
        assert result.ok and result.pool_id == pool_id
    finally:
        await doomed.local.stop_all(5)
        survivor.request_stop()
        await survivor_task


async def test_autoscale_adds_workers_on_backlog(orchestrator: Any, manager: PoolManager) -> None:
    pool_id = await manager.spawn_pool(
        "local", name="elastic", min_workers=1, max_workers=3, concurrency=1, auto_scale=True
    )
    ids = await manager.submit_many([{"call": "sleep", "args": [0.2]}] * 40, pool_id=pool_id)

    async def scaled_up() -> bool:
        return (await manager.get_pool(pool_id)).load.workers == 3

    await wait_until(scaled_up, timeout=20, what="three workers")
    for task_id in ids:
        await manager.cancel(task_id)


async def test_garbage_on_the_control_stream_is_dead_lettered(
    orchestrator: Any, manager: PoolManager, redis: aioredis.Redis, settings: Settings
) -> None:
    await redis.xadd(settings.keys.control, {"type": "CONTROL", "body": b"\x93\x01\x02\x03"})
    await redis.xadd(settings.keys.ingress, {"type": "HEARTBEAT", "body": b"\x80"})
    pool_id = await manager.spawn_pool("local", name="p", min_workers=1)
    assert (await manager.route_task({"prompt": "fine"}, timeout=15)).pool_id == pool_id
    reasons = Counter(
        f[b"reason"].decode().split(": ", 1)[0].split(" on ")[1]
        for _, f in await redis.xrange(settings.keys.dlq)
    )
    assert reasons == {settings.keys.control: 1, settings.keys.ingress: 1}


async def test_routed_tasks_wait_for_room_and_never_overfill_a_pool(
    orchestrator: Any, manager: PoolManager, redis: aioredis.Redis, settings: Settings
) -> None:
    pool_id = await manager.spawn_pool(
        "local", name="narrow", min_workers=1, concurrency=1, max_queue=3
    )
    ids = await manager.submit_many([{"call": "sleep", "args": [0.05]}] * 8)
    waiting = asyncio.ensure_future(asyncio.gather(*(manager.result(i, 30) for i in ids)))
    stream = settings.keys.pool_tasks(pool_id)
    most = 0
    while not waiting.done():
        most = max(most, await redis.xlen(stream))
        await asyncio.wait([waiting], timeout=0.01)
    assert all(r.ok and r.pool_id == pool_id for r in waiting.result())
    assert 1 <= most <= 3
    assert await redis.xlen(settings.keys.ingress) == 0
