"""Chaos for the broker and the orchestrators: Redis paused (SIGSTOP) under load, Redis
restarted empty under load, and a while without any orchestrator."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from orchestrator.broker import EmbeddedBroker, start_redis_server
from shared.config import Settings
from shared.errors import OrchestratorNotRunning, PoolNotFound
from shared.waits import orchestrator_alive
from tests.chaos.conftest import Chaos, _chaos, assert_nothing_lost
from tests.conftest import make_settings, run_cli, wait_until

PAUSE = 10.0  # seconds Redis is stopped
CLI_COMMAND_TIMEOUT = 1.0
CLI_MARGIN = 8.0  # interpreter start and imports of a CLI process on a busy 2-core machine
GAP = 5.0  # seconds without any orchestrator


def own_settings(broker: EmbeddedBroker, prefix: str, tmp_path: Path) -> Settings:
    """The chaos settings on the test's own redis-server."""
    return make_settings(
        prefix, tmp_path, redis_url=broker.url, events_max_len=100_000, task_deadline_grace=1.0
    )


async def test_redis_paused_10_s_under_load(
    own_redis: EmbeddedBroker, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = own_settings(own_redis, prefix, tmp_path)
    async for chaos in _chaos(settings, tmp_path, "redis_paused_10_s_under_load", monkeypatch):
        chaos.start_orchestrator("o1")
        await chaos.spawn("p", min_workers=2, concurrency=8)
        await chaos.submit(200, seconds=0.02, max_attempts=5)
        await chaos.running(at_least=10)
        chaos.wait(chaos.ids, timeout=90)  # callers wait through the pause
        answers = []
        started = time.monotonic()
        os.kill(own_redis.pid, signal.SIGSTOP)
        try:
            for _ in range(2):
                answers.append(
                    await run_cli(
                        own_redis.url,
                        "pool",
                        "list",
                        "--json",
                        command_timeout=CLI_COMMAND_TIMEOUT,
                        limit=60,
                    )
                )
            await asyncio.sleep(max(0.0, PAUSE - (time.monotonic() - started)))  # the fault
        finally:
            os.kill(own_redis.pid, signal.SIGCONT)
        paused = time.monotonic() - started
        await chaos.submit(100, seconds=0.01, max_attempts=5)
        slowest = max(seconds for _, _, _, seconds in answers)
        chaos.figures.faults = (
            f"Redis SIGSTOP {paused:.0f} s; `pool list` during it failed in <= {slowest:.1f} s"
        )
        fig = await chaos.finish()
        assert_nothing_lost(fig)
        line = f"error: Redis at {own_redis.url} did not answer within {CLI_COMMAND_TIMEOUT:g} s"
        for code, _, err, seconds in answers:
            assert (code, err.splitlines()) == (1, [line]), err
            assert seconds < CLI_COMMAND_TIMEOUT + CLI_MARGIN, seconds


async def test_redis_restarted_empty_under_load(
    own_redis: EmbeddedBroker, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = own_settings(own_redis, prefix, tmp_path)
    async for chaos in _chaos(settings, tmp_path, "redis_restarted_empty_under_load", monkeypatch):
        await restart_empty(chaos, own_redis)


async def restart_empty(chaos: Chaos, broker: EmbeddedBroker) -> None:
    chaos.start_orchestrator("o1")
    pool_id = await chaos.spawn("p", min_workers=2, concurrency=8)
    await chaos.submit(200, seconds=0.02, max_attempts=5)
    await chaos.running(at_least=10)
    chaos.wait(chaos.ids, timeout=60)  # callers wait through the loss
    port = broker.port
    await broker.stop()
    fresh = await start_redis_server(port, chaos.tmp_path / "fresh-redis", appendonly=False)
    try:

        async def reregistered() -> bool:
            try:
                info = await chaos.manager.get_pool(pool_id)
            except PoolNotFound:  # not yet: the orchestrator notices within a tick
                return False
            return info.load.local_workers == 2

        await wait_until(reregistered, timeout=30, what="the pool re-registered and served")
        await chaos.submit(100, seconds=0.01, max_attempts=5)
        chaos.figures.faults = "Redis SIGTERM + restart empty (no persistence)"
        fig = await chaos.finish(timeout=60)
        # tasks whose records went with the data are reported lost to their callers
        assert fig.lost == 0, fig
        assert fig.completed + fig.lost_reported == fig.tasks, fig
        assert fig.left_in_streams == 0 and fig.stuck == 0, fig
        assert fig.serving == "2/2", fig
        health = await chaos.manager.health_check()
        assert health["broker"]["data_lost_at"] > 0, health["broker"]
        chaos.figures.notes.append(f"{fig.lost_reported} callers told TaskStateLost")
    finally:
        await chaos.close()
        await fresh.stop()


async def test_no_orchestrator_for_a_while_then_one_starts(chaos: Chaos) -> None:
    first = chaos.start_orchestrator("o1")
    await chaos.spawn("p", min_workers=2, concurrency=8)
    await chaos.submit(40, seconds=0.01)
    first.send_signal(signal.SIGTERM)
    await asyncio.to_thread(first.wait, 30)
    gap_started = time.monotonic()

    async def none_alive() -> bool:
        return not await orchestrator_alive(chaos.redis, chaos.settings)

    await wait_until(none_alive, what="no orchestrator to be alive")
    during = await chaos.submit(60, seconds=0.01)
    told = []
    for task_id in during:
        asked = time.monotonic()
        with pytest.raises(OrchestratorNotRunning) as caught:
            await chaos.manager.result(task_id, timeout=30)
        told.append(time.monotonic() - asked)
        assert caught.value.task_id == task_id
        assert "no orchestrator is running" in str(caught.value), caught.value
    await asyncio.sleep(max(0.0, GAP - (time.monotonic() - gap_started)))  # the fault
    gap = time.monotonic() - gap_started
    chaos.start_orchestrator("o2")

    async def one_alive() -> bool:
        return await orchestrator_alive(chaos.redis, chaos.settings)

    await wait_until(one_alive, timeout=30, what="the new orchestrator to be alive")
    chaos.figures.faults = (
        f"no orchestrator for {gap:.0f} s; {len(during)} waits told in <= {max(told):.2f} s"
    )
    fig = await chaos.finish()
    assert_nothing_lost(fig)
    assert max(told) < 2.0, told
