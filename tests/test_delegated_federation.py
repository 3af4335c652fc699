"""Federation: a delegated pool of deployment 1 runs its tasks on deployment 2 through
deployment 2's MCP facade (HTTP, bearer token, its own process), on the standalone Redis and on
the cluster. The deployments share the Redis server under distinct key prefixes, each with its
own orchestrator and pools."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shared.client import PoolManager
from shared.config import Settings
from shared.errors import PoolUnavailable, TaskNotFound
from shared.models import PoolStatus, TaskResult, TaskStatus, new_id
from tests.conftest import client_for, delete_prefix, make_settings, wait_until
from tests.delegated_support import Facade, running_orchestrator

pytestmark = pytest.mark.integration

TOKEN = "federation-token-" + "z" * 24
TASKS = 500


@pytest.fixture
async def remote_settings(settings: Settings, tmp_path: Path) -> AsyncIterator[Settings]:
    """Deployment 2: the same Redis under a prefix of its own."""
    value = make_settings(f"test-{new_id('r')}:", tmp_path, redis_url=settings.redis_url)
    yield value
    await delete_prefix(value.redis_url, value.key_prefix)


def remote_config(facade: Facade, pool: str | None, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "url": facade.url,
        "kind": "mahavishnu",
        "token_env": "FEDERATION_TOKEN",
        "health_interval": 0.3,
        "connect_timeout": 5.0,
        "call_timeout": 10.0,
    }
    if pool is not None:
        config["pool"] = pool
    return {**config, **extra}


async def test_500_tasks_run_on_deployment_2_once_each_across_a_facade_restart(
    settings: Settings,
    remote_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FEDERATION_TOKEN", TOKEN)  # before the orchestrator starts bridges
    facade = Facade(remote_settings, TOKEN, tmp_path / "facade.log")
    runs = client_for(settings.redis_url)
    waits: list[asyncio.Future[TaskResult]] = []
    async with (
        running_orchestrator(remote_settings, tmp_path / "logs-2"),
        running_orchestrator(settings, tmp_path / "logs-1"),
        PoolManager(remote_settings) as pools_2,
        PoolManager(settings) as pools_1,
    ):
        try:
            await facade.start()
            remote_pool = await pools_2.spawn_pool(
                "local",
                name="remote",
                min_workers=2,
                concurrency=16,
                functions={"record": "tests.chaos.funcs:record"},
            )
            pool = await pools_1.spawn_pool(
                "delegated",
                name="federated",
                concurrency=16,
                remote=remote_config(facade, remote_pool),
            )
            info = await pools_1.get_pool(pool)
            assert info.spec.remote is not None and info.remote_health == "ok"
            assert TOKEN not in info.model_dump_json()  # only the variable's name is kept

            tokens = [f"job-{n}" for n in range(TASKS)]
            ids = await pools_1.submit_many(
                [{"call": "record", "args": [t], "timeout": 60} for t in tokens], pool_id=pool
            )
            waits = [asyncio.ensure_future(pools_1.result(task_id, 120)) for task_id in ids]
            first = waits[:100]
            done_early = [await w for w in first]  # a fifth is done: the rest is in flight

            await facade.kill()

            async def degraded() -> bool:
                return (await pools_1.get_pool(pool)).status is PoolStatus.DEGRADED

            await wait_until(degraded, 15, "the pool to be degraded while its remote is down")
            assert "remote does not answer" in (await pools_1.get_pool(pool)).detail

            await facade.start()

            async def serving() -> bool:
                return (await pools_1.get_pool(pool)).status is PoolStatus.RUNNING

            await wait_until(serving, 15, "the pool to run again once its remote answers")
            results = done_early + [await w for w in waits[100:]]
        finally:
            for wait in waits:
                wait.cancel()
            await facade.stop()
        assert [r.status for r in results] == [TaskStatus.COMPLETED] * TASKS
        assert [r.output for r in results] == tokens
        assert {r.pool_id for r in results} == {pool}  # the result comes back as the pool's
        counted = await runs.hgetall(f"{remote_settings.key_prefix}chaos:runs")
        assert len(counted) == TASKS
        twice = {k: v for k, v in counted.items() if int(v) != 1}
        assert not twice, f"ran more than once on deployment 2: {twice}"
        await pools_1.close_pool(pool)
    await runs.aclose()


async def test_a_wrong_token_is_a_clear_spawn_error(
    settings: Settings,
    remote_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FEDERATION_TOKEN", "not-the-token-" + "q" * 20)
    facade = Facade(remote_settings, TOKEN, tmp_path / "facade.log")
    async with (
        running_orchestrator(settings, tmp_path / "logs-1"),
        PoolManager(settings) as pools,
    ):
        try:
            await facade.start()
            with pytest.raises(PoolUnavailable) as refused:
                await pools.spawn_pool(
                    "delegated", name="refused", remote=remote_config(facade, None)
                )
        finally:
            await facade.stop()
    message = str(refused.value)
    assert "failed to spawn" in message and f"(remote {facade.url})" in message
    assert "HTTP 401" in message and "FEDERATION_TOKEN" in message
    assert "not-the-token" not in message


async def test_a_timeout_or_a_cancel_stops_the_task_on_deployment_2(
    settings: Settings,
    remote_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FEDERATION_TOKEN", TOKEN)
    facade = Facade(remote_settings, TOKEN, tmp_path / "facade.log")
    redis = client_for(settings.redis_url)

    async def remote_task(task_id: str) -> str:
        """The id of the task deployment 2 runs for our task's first run ('' before it)."""
        first_run = await redis.get(remote_settings.keys.idempotency(f"{task_id}:1"))
        return first_run.decode().split()[0] if first_run else ""

    async with (
        running_orchestrator(remote_settings, tmp_path / "logs-2"),
        running_orchestrator(settings, tmp_path / "logs-1"),
        PoolManager(remote_settings) as pools_2,
        PoolManager(settings) as pools_1,
    ):
        try:
            await facade.start()
            remote_pool = await pools_2.spawn_pool("local", name="remote")
            pool = await pools_1.spawn_pool(
                "delegated", name="federated", remote=remote_config(facade, remote_pool)
            )
            slow = {"call": "sleep", "args": [60], "timeout": 2, "max_attempts": 1}
            result = await pools_1.execute_on_pool(pool, slow)
            assert result.status is TaskStatus.DEAD_LETTERED
            assert "timed out after 2s" in (result.error or "")
            timed_out = await remote_task(result.task_id)

            async def over_there() -> bool:  # cancelled by us, or timed out there first
                return (await pools_2.status(timed_out)).status.is_final

            await wait_until(over_there, 15, "the remote task to end")

            task_id = await pools_1.submit({**slow, "timeout": 60}, pool_id=pool)

            async def running() -> bool:
                there = await remote_task(task_id)
                try:  # the key is claimed a moment before the task's record is written
                    return bool(there) and (await pools_2.status(there)).status is (
                        TaskStatus.RUNNING
                    )
                except TaskNotFound:
                    return False

            await wait_until(running, 15, "the task to run on deployment 2")
            await pools_1.cancel(task_id)
            assert (await pools_1.result(task_id, 15)).status is TaskStatus.CANCELLED
            cancelled = await remote_task(task_id)

            async def cancelled_there() -> bool:
                return (await pools_2.status(cancelled)).status is TaskStatus.CANCELLED

            await wait_until(cancelled_there, 15, "the remote task to be cancelled")
        finally:
            await facade.stop()
            await redis.aclose()
