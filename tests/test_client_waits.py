"""Waits that cannot end by themselves stop with the reason, on the real Redis: no orchestrator
alive for a task that needs one (OrchestratorNotRunning, while the task keeps waiting), and a
task whose record vanished (TaskStateLost)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from orchestrator.broker import EmbeddedBroker, free_port, start_redis_server
from orchestrator.orchestrator import Orchestrator
from shared.client import PoolManager
from shared.config import Settings
from shared.connection import Redis
from shared.errors import OrchestratorNotRunning, ResultTimeout, TaskStateLost
from shared.models import PoolSpec, PoolStatus, TaskStatus
from shared.state import pool_hash_fields
from tests.conftest import make_settings, wait_until

REPO = Path(__file__).resolve().parent.parent
BOUND = 15.0  # seconds any of these waits may take to notice


async def is_running(manager: PoolManager, task_id: str) -> bool:
    return (await manager.status(task_id)).status is TaskStatus.RUNNING


def guarded(manager: PoolManager, task_id: str) -> bool:
    return task_id in manager._guard._watched


async def test_a_routed_task_without_an_orchestrator_fails_fast_and_is_routed_later(
    manager: PoolManager, settings: Settings, tmp_path: Path
) -> None:
    assert await manager.orchestrators() == []
    task_id = await manager.submit({"call": "add", "args": [2, 3]})  # queued all the same
    hint = (
        f"no orchestrator is running; start one with `mahavishnu orchestrator` (task {task_id} "
        "keeps waiting in the ingress)"
    )
    with pytest.raises(OrchestratorNotRunning) as caught:
        await asyncio.wait_for(manager.result(task_id), BOUND)  # no timeout of its own
    assert str(caught.value) == hint and caught.value.task_id == task_id
    with pytest.raises(OrchestratorNotRunning, match="keeps waiting in the ingress"):
        await asyncio.wait_for(manager.route_task({"call": "noop"}, timeout=600), BOUND)
    with pytest.raises(OrchestratorNotRunning, match="keeps waiting in the ingress"):
        await asyncio.wait_for(manager.execute_batch([{"call": "noop"}] * 3), BOUND)
    async with PoolManager(settings) as other:  # a wait on a task another client submitted
        with pytest.raises(OrchestratorNotRunning, match=task_id):
            await asyncio.wait_for(other.result(task_id, timeout=600), BOUND)
    assert (await manager.status(task_id)).status is TaskStatus.PENDING

    orchestrator = Orchestrator(settings, log_dir=tmp_path / "logs")
    run = asyncio.create_task(orchestrator.run())
    try:
        await orchestrator.wait_ready()
        assert await manager.orchestrators() == [orchestrator.id]
        await manager.spawn_pool("local", name="p", min_workers=1)
        assert (await manager.result(task_id, timeout=30)).output == 5
    finally:
        orchestrator.request_stop()
        await run


async def test_a_direct_task_on_a_pool_without_workers_and_no_orchestrator(
    manager: PoolManager, redis: Redis, settings: Settings
) -> None:
    spec = PoolSpec(id="idle", name="idle")
    await redis.hset(settings.keys.pool("idle"), mapping=pool_hash_fields(spec, PoolStatus.RUNNING))
    await redis.sadd(settings.keys.pools, "idle")
    task_id = await manager.submit({"call": "noop"}, pool_id="idle")
    assert await manager.live_workers("idle") == 0
    with pytest.raises(
        OrchestratorNotRunning,
        match=(
            r"no orchestrator is running and pool 'idle' has no live worker; start one with "
            rf"`mahavishnu orchestrator` \(task {task_id} keeps waiting for pool 'idle'\)"
        ),
    ):
        await asyncio.wait_for(manager.result(task_id, timeout=600), BOUND)


def start_orchestrator_process(tmp_path: Path) -> subprocess.Popen[bytes]:
    """An orchestrator in its own process (so it can be killed with SIGKILL)."""
    code = (
        "import asyncio, sys; from pathlib import Path; from shared.config import load_settings;"
        "from orchestrator.orchestrator import Orchestrator;"
        "asyncio.run(Orchestrator(load_settings(), log_dir=Path(sys.argv[1])).run())"
    )
    log = (tmp_path / "orchestrator.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "logs")], stdout=log, stderr=log, cwd=REPO
    )
    log.close()
    return proc


async def test_an_orchestrator_killed_while_a_caller_waits(
    manager: PoolManager, settings: Settings, tmp_path: Path
) -> None:
    proc = start_orchestrator_process(tmp_path)
    try:

        async def alive() -> bool:
            return bool(await manager.orchestrators())

        await wait_until(alive, what="the orchestrator's heartbeat")
        # no pool has the label: the orchestrator holds the task, which stays pending
        task = {"call": "noop", "labels": {"gpu": "none-such"}, "queue_timeout": 300}
        task_id = await manager.submit(task)
        with pytest.raises(ResultTimeout):  # while the orchestrator lives, the wait goes on
            await manager.result(task_id, timeout=settings.orchestrator_lease_ttl + 1)
        waiting = asyncio.create_task(manager.result(task_id))
        await wait_until(lambda: asyncio.sleep(0, guarded(manager, task_id)), what="the wait")
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(OrchestratorNotRunning, match=f"task {task_id} keeps waiting"):
            await asyncio.wait_for(waiting, BOUND)
        # the heartbeat's TTL, then one look of the guard
        assert time.monotonic() - killed < settings.orchestrator_lease_ttl + 4
        assert (await manager.status(task_id)).status is TaskStatus.PENDING
    finally:
        proc.kill()
        proc.wait()


async def test_a_deleted_task_record_ends_every_wait(
    orchestrator: Any, manager: PoolManager, redis: Redis, settings: Settings
) -> None:
    pool_id = await manager.spawn_pool("local", name="p", min_workers=1)
    task_id = await manager.submit({"call": "sleep", "args": [3]}, pool_id=pool_id)
    await wait_until(lambda: is_running(manager, task_id), what="the task to start")
    async with PoolManager(settings) as other:
        waits = [
            asyncio.create_task(manager.result(task_id)),
            asyncio.create_task(manager.result(task_id, timeout=600)),
            asyncio.create_task(other.result(task_id)),  # through the events stream
        ]
        await wait_until(
            lambda: asyncio.sleep(0, guarded(manager, task_id) and guarded(other, task_id)),
            what="the waits",
        )
        await redis.delete(settings.keys.task(task_id))
        for wait in waits:
            with pytest.raises(TaskStateLost) as caught:
                await asyncio.wait_for(wait, BOUND)
            assert str(caught.value) == (
                f"state of task {task_id} was lost (its record is gone from Redis: was Redis "
                "restarted without persistence?)"
            )


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    """A Redis of the test's own, without persistence, that the test may flush."""
    broker = await start_redis_server(free_port(), tmp_path / "own-redis", appendonly=False)
    yield broker
    await broker.stop()


async def test_redis_flushed_under_a_waiting_caller(
    own_redis: EmbeddedBroker, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.config import settings_env

    settings = make_settings(prefix, tmp_path, redis_url=own_redis.url)
    monkeypatch.setenv("MAHAVISHNU_SETTINGS_DIR", str(tmp_path / "no-settings"))
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    orchestrator = Orchestrator(settings, log_dir=tmp_path / "logs")
    run = asyncio.create_task(orchestrator.run())
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        await orchestrator.wait_ready()
        async with PoolManager(settings) as manager:
            pool_id = await manager.spawn_pool("local", name="p", min_workers=1)
            first = await manager.execute_on_pool(pool_id, {"call": "noop"}, timeout=30)
            assert first.ok  # the reply reader has read (and trimmed) its stream
            task_id = await manager.submit({"call": "sleep", "args": [2]}, pool_id=pool_id)
            await wait_until(lambda: is_running(manager, task_id), what="the task to start")
            waiting = asyncio.create_task(manager.result(task_id))
            await wait_until(lambda: asyncio.sleep(0, guarded(manager, task_id)), what="the wait")
            await client.flushdb()
            with pytest.raises(TaskStateLost, match=f"state of task {task_id} was lost"):
                await asyncio.wait_for(waiting, BOUND)
            # the worker still finishes the task: its reply goes to a new reply stream, which the
            # reader reads although the one it read before is gone
            done = await asyncio.wait_for(manager.result(task_id), BOUND)
            assert done.status is TaskStatus.COMPLETED and done.task_id == task_id
    finally:
        await client.aclose()
        orchestrator.request_stop()
        await run
