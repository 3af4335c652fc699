"""Supervision that keeps capacity: scale-down stops exactly the extra workers, drains end by
themselves, external workers add capacity, a dead worker is replaced and its work taken back at
once, closing a pool follows a stated rule, and a Redis that lost its data gets its pools back.
All with real worker processes on the real Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from orchestrator.cli.render import workers_cell
from orchestrator.orchestrator import Orchestrator
from shared.client import PoolManager
from shared.config import Settings, settings_env
from shared.health import health_report
from shared.models import PoolInfo, TaskStatus
from tests.conftest import make_settings, wait_until

FUNCS = {"block_first": "tests.blocking_funcs:block_first"}


async def local_pids(orch: Orchestrator, pool_id: str) -> dict[str, int]:
    """Worker id -> pid of the pool's live local processes that were not asked to stop."""
    return {p.worker_id: p.process.pid for p in orch.local.alive(pool_id)}


async def pool(manager: PoolManager, pool_id: str) -> PoolInfo:
    return await manager.get_pool(pool_id)


async def test_scale_down_stops_exactly_the_extra_workers(
    orchestrator: Orchestrator, manager: PoolManager
) -> None:
    pool_id = await manager.spawn_pool("local", name="p", min_workers=1, max_workers=4)
    for _round in range(3):
        await manager.scale(pool_id, 4, wait=True)
        before = await local_pids(orchestrator, pool_id)
        assert len(before) == 4
        await manager.scale(pool_id, 1)

        async def settled() -> bool:
            info = await pool(manager, pool_id)
            return (
                str(info.status) == "running"
                and info.load.workers == 1
                and info.load.draining == 0
                and orchestrator.local.running(pool_id) == 1
            )

        await wait_until(settled, timeout=30, what="the pool to settle at one worker")
        after = await local_pids(orchestrator, pool_id)
        assert len(after) == 1
        assert set(after) <= set(before), "the surviving worker must be one of the four"


async def test_an_external_worker_adds_capacity_and_is_never_stopped(
    orchestrator: Orchestrator, manager: PoolManager, settings: Settings
) -> None:
    pool_id = await manager.spawn_pool("local", name="p", min_workers=1, max_workers=2)
    external = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "--pool", pool_id, "--worker-id", "by-hand"
    )
    try:

        async def joined() -> bool:
            info = await pool(manager, pool_id)
            return info.load.external_workers == 1 and info.load.local_workers == 1

        await wait_until(joined, timeout=20, what="the external worker to count")
        # ten more supervision ticks: nothing may stop it or a local worker
        for _ in range(10):
            orchestrator._ticked.clear()
            await orchestrator._ticked.wait()
        assert external.returncode is None
        info = await pool(manager, pool_id)
        assert workers_cell(info) == "1/1 local + 1 external"
        assert orchestrator.local.running(pool_id) == 1
        report = await health_report(manager.redis, settings)
        assert report["pools"][pool_id]["external"] == 1
        assert report["pools"][pool_id]["healthy"]
        results = await manager.execute_batch([{"call": "add", "args": [i, 1]} for i in range(40)])
        assert {r.worker_id for r in results} >= {"by-hand"}
    finally:
        if external.returncode is None:
            external.send_signal(signal.SIGTERM)
        await asyncio.wait_for(external.wait(), 30)


@pytest.fixture
async def patient(prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Settings whose heartbeat TTL (30 s) is far longer than any wait below, so a prompt
    replacement can only come from the supervisor knowing the process died."""
    from tests.conftest import delete_prefix

    monkeypatch.setenv("MAHAVISHNU_SETTINGS_DIR", str(tmp_path / "no-settings"))
    value = make_settings(prefix, tmp_path, heartbeat_ttl=30.0, drain_grace=1.0)
    for name, env_value in settings_env(value).items():
        monkeypatch.setenv(name, env_value)
    orch = Orchestrator(value, log_dir=tmp_path / "logs")
    task = asyncio.create_task(orch.run())
    await orch.wait_ready()
    async with PoolManager(value) as pm:
        yield orch, pm
    orch.request_stop()
    await task
    await delete_prefix(value.redis_url, prefix)


async def test_a_killed_worker_is_replaced_and_its_task_taken_back_at_once(patient: Any) -> None:
    orch, manager = patient
    pool_id = await manager.spawn_pool("local", name="p", min_workers=1, functions=FUNCS)
    task_id = await manager.submit({"call": "block_first", "args": ["t1", 60]}, pool_id=pool_id)

    async def blocking() -> bool:  # its first run counted: a kill before that would leave the
        # count for the next attempt, which would then block instead
        counter = f"{manager.settings.key_prefix}test:block_first"
        return await manager.redis.hget(counter, "t1") == b"1"

    await wait_until(blocking, timeout=20, what="the task's first run to start")
    ((victim, pid),) = (await local_pids(orch, pool_id)).items()
    killed_at = time.monotonic()
    os.killpg(pid, signal.SIGKILL)
    result = await manager.result(task_id, timeout=20)
    took = time.monotonic() - killed_at
    assert result.ok and result.attempts == 2 and result.worker_id != victim
    assert took < 10, f"replacement took {took:.1f}s; the heartbeat TTL is 30s"
    info = await pool(manager, pool_id)
    assert info.restarts >= 1 and "exited with code" in info.last_restart_reason


async def test_a_drain_that_cannot_finish_ends_by_itself(patient: Any) -> None:
    """A blocking function ignores every cancel; the worker still exits after its drain
    deadline (drain_grace + 10 s), the task is handed back and runs again elsewhere."""
    orch, manager = patient
    pool_id = await manager.spawn_pool(
        "local", name="p", min_workers=1, max_workers=2, functions=FUNCS
    )
    task_id = await manager.submit({"call": "block_first", "args": ["t2", 600]}, pool_id=pool_id)

    async def running() -> bool:
        return (await manager.status(task_id)).status is TaskStatus.RUNNING

    await wait_until(running, timeout=20, what="the task to run")
    ((victim, _pid),) = (await local_pids(orch, pool_id)).items()
    await manager.scale(pool_id, 2, wait=True)
    proc = orch.local.pool(pool_id).processes[victim]
    orch.local.stop_worker(proc)  # drain the busy one; the other takes its task once handed back
    await asyncio.wait_for(proc.process.wait(), 40)
    result = await manager.result(task_id, timeout=30)
    assert result.ok and result.worker_id != victim


async def test_closing_a_pool_fails_direct_tasks_and_reroutes_routed_and_allowed_ones(
    orchestrator: Orchestrator, manager: PoolManager, redis: aioredis.Redis, settings: Settings
) -> None:
    closing = await manager.spawn_pool("local", name="closing", min_workers=0, max_workers=1)
    other = await manager.spawn_pool("local", name="other", min_workers=1)
    direct = await manager.submit({"call": "add", "args": [1, 1]}, pool_id=closing)
    allowed = await manager.submit(
        {"call": "add", "args": [2, 2], "reroute_on_close": True}, pool_id=closing
    )
    await manager.close_pool(closing, wait=True, timeout=60)
    failed = await manager.result(direct, timeout=20)
    assert failed.status is TaskStatus.FAILED
    assert f"pool {closing} closed before the task ran" in (failed.error or "")
    moved = await manager.result(allowed, timeout=20)
    assert moved.ok and moved.output == 4 and moved.pool_id == other


async def test_pools_come_back_after_redis_lost_its_data(
    orchestrator: Orchestrator, manager: PoolManager, redis: aioredis.Redis, settings: Settings
) -> None:
    pool_id = await manager.spawn_pool("local", name="p", min_workers=1)
    assert (await manager.execute_on_pool(pool_id, {"call": "add", "args": [1, 2]})).output == 3
    keys = [k async for k in redis.scan_iter(match=f"{settings.keys.prefix}*")]
    await redis.delete(*keys)  # what a restart without persistence leaves: nothing

    async def back() -> bool:
        try:
            info = await pool(manager, pool_id)
        except Exception:
            return False
        return str(info.status) == "running" and info.load.workers == 1

    await wait_until(back, timeout=30, what="the pool to be re-registered")
    assert (await manager.execute_on_pool(pool_id, {"call": "add", "args": [2, 2]})).output == 4
    report = await health_report(manager.redis, settings)
    assert "data was lost" in report["broker"]["data_lost"]


async def test_a_pool_without_its_orchestrator_shows_unsupervised(
    settings: Settings, tmp_path: Path, manager: PoolManager
) -> None:
    orch = Orchestrator(settings, log_dir=tmp_path / "logs", stop_workers_on_exit=True)
    task = asyncio.create_task(orch.run())
    await orch.wait_ready()
    pool_id = await manager.spawn_pool("local", name="p", min_workers=1)
    assert (await pool(manager, pool_id)).shown_status == "running"
    orch.request_stop()
    await task

    async def unsupervised() -> bool:
        return (await pool(manager, pool_id)).shown_status == "unsupervised"

    await wait_until(unsupervised, timeout=20, what="the pool to show unsupervised")
    report = await health_report(manager.redis, settings)
    assert not report["healthy"]
    assert "no orchestrator supervises it" in " ".join(report["pools"][pool_id]["problems"])
