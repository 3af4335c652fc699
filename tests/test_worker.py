"""The worker loop in-process: burst mode, drain and hand-back, heartbeats, group membership."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared.client import PoolManager
from shared.config import Settings
from shared.finals import SENT_MARKER_GRACE, PendingAck
from shared.keys import WORKER_GROUP
from shared.models import TaskStatus
from shared.retries import retry_delay
from tests.conftest import wait_until
from worker import worker as worker_module
from worker.worker import Worker


async def empty_pool(manager: PoolManager, **spec: Any) -> str:
    """A pool with no worker processes of its own, for in-process workers."""
    return await manager.spawn_pool("local", name="inproc", min_workers=0, **spec)


async def test_a_burst_worker_serves_everything_then_leaves_its_group(
    orchestrator: Any, manager: PoolManager, redis: aioredis.Redis, settings: Settings
) -> None:
    pool_id = await empty_pool(manager)
    ids = await manager.submit_many(
        [{"call": "add", "args": [i, 1]} for i in range(50)], pool_id=pool_id
    )
    worker = Worker(settings, pool_id, concurrency=8, burst=True)
    await worker.run()
    results = [await manager.result(i, timeout=5) for i in ids]
    assert [r.output for r in results] == [i + 1 for i in range(50)]
    assert {r.worker_id for r in results} == {worker.worker_id}
    stream = settings.keys.pool_tasks(pool_id)
    assert await redis.xlen(stream) == 0
    consumers = await redis.xinfo_consumers(stream, WORKER_GROUP)
    assert worker.worker_id not in [c["name"] for c in consumers]
    assert not await redis.exists(settings.keys.worker(worker.worker_id))


async def test_drain_finishes_in_flight_tasks_within_the_grace(
    orchestrator: Any, manager: PoolManager, settings: Settings
) -> None:
    pool_id = await empty_pool(manager)
    ids = await manager.submit_many([{"call": "sleep", "args": [0.3]}] * 3, pool_id=pool_id)
    worker = Worker(settings, pool_id, concurrency=3)
    running = asyncio.create_task(worker.run())

    async def all_running() -> bool:
        states = [(await manager.status(i)).status for i in ids]
        return all(s is TaskStatus.RUNNING for s in states)

    await wait_until(all_running, what="three tasks running")
    worker.request_stop()
    await running
    results = [await manager.result(i, timeout=5) for i in ids]
    assert all(r.ok and r.attempts == 1 and r.worker_id == worker.worker_id for r in results)


async def test_past_the_grace_unfinished_tasks_are_handed_back_not_lost(
    orchestrator: Any, manager: PoolManager, redis: aioredis.Redis, settings: Settings
) -> None:
    pool_id = await empty_pool(manager)
    task_id = await manager.submit({"call": "sleep", "args": [30]}, pool_id=pool_id)
    impatient = settings.model_copy(update={"drain_grace": 0.1})
    worker = Worker(impatient, pool_id, concurrency=1)
    running = asyncio.create_task(worker.run())
    await wait_until(
        lambda: _status_is(manager, task_id, TaskStatus.RUNNING), what="the task to start"
    )
    worker.request_stop()
    await running
    stream = settings.keys.pool_tasks(pool_id)
    assert await redis.xlen(stream) == 1
    assert (await redis.xpending(stream, WORKER_GROUP))["pending"] == 0
    assert (await manager.status(task_id)).status is TaskStatus.QUEUED
    await manager.cancel(task_id)


async def test_a_worker_process_drains_on_sigterm(orchestrator: Any, manager: PoolManager) -> None:
    pool_id = await manager.spawn_pool("local", name="p", min_workers=1, concurrency=2)
    ids = await manager.submit_many([{"call": "sleep", "args": [0.4]}] * 2, pool_id=pool_id)
    await wait_until(lambda: _status_is(manager, ids[1], TaskStatus.RUNNING), what="tasks to start")
    worker_id = (await manager.status(ids[0])).worker_id or ""
    proc = orchestrator.local.pools[pool_id].processes[worker_id]
    os.kill(proc.process.pid, signal.SIGTERM)
    assert await proc.process.wait() == 0
    results = [await manager.result(i, timeout=10) for i in ids]
    assert all(r.ok and r.attempts == 1 and r.worker_id == worker_id for r in results)


async def test_the_heartbeat_hash_expires(
    orchestrator: Any, manager: PoolManager, redis: aioredis.Redis, settings: Settings
) -> None:
    pool_id = await empty_pool(manager)
    worker = Worker(settings, pool_id, concurrency=2)
    await worker.start()
    try:
        key = settings.keys.worker(worker.worker_id)
        beat = await redis.hgetall(key)
        assert beat[b"pool"] == pool_id.encode()
        assert 0 < await redis.pttl(key) <= settings.heartbeat_ttl * 1000
    finally:
        await worker._leave()
        await worker._reader.aclose()
        await worker.redis.aclose()


def test_retry_delays_grow_and_are_capped() -> None:
    assert all(0 <= retry_delay(1, 1.0, 60.0) <= 1.0 for _ in range(50))
    assert all(0 <= retry_delay(10, 1.0, 5.0) <= 5.0 for _ in range(50))
    assert max(retry_delay(6, 1.0, 1000.0) for _ in range(200)) > 8.0


async def _status_is(manager: PoolManager, task_id: str, status: TaskStatus) -> bool:
    return (await manager.status(task_id)).status is status


async def test_a_read_in_flight_when_the_stop_comes_is_still_flushed(
    orchestrator: Any, manager: PoolManager, redis: aioredis.Redis, settings: Settings
) -> None:
    pool_id = await empty_pool(manager)
    stream = settings.keys.pool_tasks(pool_id)
    slow_reads = settings.model_copy(update={"worker_block_ms": 5000})
    worker = Worker(slow_reads, pool_id, concurrency=2)

    read_started = asyncio.Event()
    real_read = worker._reader.xreadgroup

    async def observed_read(*args: Any, **kwargs: Any) -> Any:
        read_started.set()
        return await real_read(*args, **kwargs)

    worker._reader.xreadgroup = observed_read
    running = asyncio.create_task(worker.run())
    await read_started.wait()
    worker.request_stop()
    worker._flush_wanted.set()  # a flush with nothing running, after the stop
    task_id = await manager.submit({"call": "noop"}, pool_id=pool_id)  # lands in that read
    await running
    assert (await manager.result(task_id, timeout=5)).ok
    assert (await redis.xpending(stream, WORKER_GROUP))["pending"] == 0


async def test_a_worker_acknowledges_every_entry_of_a_stream_of_tasks_while_it_serves(
    orchestrator: Any,
    manager: PoolManager,
    redis: aioredis.Redis,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each flush's acknowledgement rides with the next flush; the last one, which no flush
    follows, goes alone: with the worker still serving, nothing is left pending, every result
    is marked announced and every sent marker is on its short grace."""
    carried = 0
    real = worker_module.finalize_deferring_ack

    async def counted(*args: Any, previous: PendingAck | None, **kwargs: Any) -> Any:
        nonlocal carried
        carried += previous is not None
        return await real(*args, previous=previous, **kwargs)

    monkeypatch.setattr(worker_module, "finalize_deferring_ack", counted)
    pool_id = await empty_pool(manager)
    stream = settings.keys.pool_tasks(pool_id)
    worker = Worker(settings, pool_id, concurrency=8)
    running = asyncio.create_task(worker.run())
    try:
        ids: list[str] = []
        for wave in range(5):
            batch = [{"call": "add", "args": [wave, i]} for i in range(40)]
            ids += await manager.submit_many(batch, pool_id=pool_id)
        results = [await manager.result(i, timeout=10) for i in ids]
        assert all(r.ok and r.worker_id == worker.worker_id for r in results)

        async def all_acknowledged() -> bool:
            pending = (await redis.xpending(stream, WORKER_GROUP))["pending"]
            return pending == 0 and await redis.xlen(stream) == 0

        await wait_until(all_acknowledged, what="every entry acknowledged")
        assert not running.done()  # by the worker at work, not by its drain
        assert carried > 0  # 200 tasks, 8 at a time: some flushes carried the previous ack
        states = [settings.keys.pool_task(pool_id, i) for i in ids]
        assert {await redis.hget(state, "announced") for state in states} == {b"1"}
        markers = [k async for k in redis.scan_iter(match=f"{settings.key_prefix}*:sent:*")]
        for marker in markers:  # step 3 leaves each a short grace (finals.SENT_MARKER_GRACE)
            assert 0 < await redis.ttl(marker) <= SENT_MARKER_GRACE
    finally:
        worker.request_stop()
        await running
