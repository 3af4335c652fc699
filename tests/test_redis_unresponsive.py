"""A Redis that stops answering (SIGSTOP): CLI commands fail within `redis_command_timeout`
with one line naming the URL, and long-running processes ride the pause out.

Every test runs its own redis-server on a free port, so pausing it disturbs no other test.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestrator.broker import EmbeddedBroker, free_port, start_redis_server
from shared.client import PoolManager
from shared.config import Settings
from shared.connection import as_broker_error, blocking_socket_timeout, connect, unresponsive
from shared.errors import BrokerError, BrokerUnresponsive
from tests.conftest import delete_prefix, make_settings, run_cli

COMMAND_TIMEOUT = 2.0
MARGIN = 8.0  # interpreter start and imports of a CLI process on a busy 2-core machine


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    broker = await start_redis_server(free_port(), tmp_path / "own-redis", appendonly=False)
    yield broker
    await broker.stop()


@contextmanager
def paused(broker: EmbeddedBroker) -> Iterator[None]:
    """The server stopped with SIGSTOP (connections are accepted, nothing is answered)."""
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(broker.pid, signal.SIGCONT)


@pytest.mark.parametrize(
    "args",
    [
        ["pool", "list", "--json"],
        ["task", "submit", "--call", "noop"],
        ["task", "status", "t-1"],
        ["pool", "close", "p-1", "--wait"],
    ],
)
async def test_cli_commands_fail_within_the_bound_when_redis_stops_answering(
    own_redis: EmbeddedBroker, args: list[str]
) -> None:
    url = f"redis://:s3cret-pw@127.0.0.1:{own_redis.port}/0"
    with paused(own_redis):
        code, out, err, seconds = await run_cli(url, *args, command_timeout=COMMAND_TIMEOUT)
    assert code == 1, (out, err)
    assert out == ""
    assert err.splitlines() == [
        f"error: Redis at redis://:***@127.0.0.1:{own_redis.port}/0 did not answer within 2 s"
    ]
    assert seconds < COMMAND_TIMEOUT + MARGIN, seconds


async def test_the_same_command_answers_once_redis_resumes(own_redis: EmbeddedBroker) -> None:
    with paused(own_redis):
        code, _, _, _ = await run_cli(
            own_redis.url, "pool", "list", "--json", command_timeout=COMMAND_TIMEOUT
        )
    assert code == 1
    code, out, err, _ = await run_cli(
        own_redis.url, "pool", "list", "--json", command_timeout=COMMAND_TIMEOUT
    )
    assert (code, out.strip()) == (0, "[]"), err


async def test_the_error_and_the_timeouts_come_from_the_settings(tmp_path: Path) -> None:
    settings = make_settings("test-unresponsive:", tmp_path, redis_command_timeout=1.5)
    error = unresponsive(settings)
    assert isinstance(error, BrokerUnresponsive) and isinstance(error, BrokerError)
    assert str(error) == f"Redis at {settings.redis_url_redacted} did not answer within 1.5 s"
    assert str(as_broker_error(RedisTimeoutError("Timeout reading"), settings)) == str(error)
    other = ValueError("x")
    assert as_broker_error(other, settings) is other
    # a blocking read keeps its connection past the longest BLOCK, plus the command bound
    slow = settings.model_copy(update={"worker_block_ms": 20_000})
    assert blocking_socket_timeout(slow) == 21.5
    assert blocking_socket_timeout(settings) == 5.0 + 1.5
    for blocking in (False, True):
        client = connect(settings, blocking=blocking)
        kwargs = client.connection_pool.connection_kwargs
        expected = blocking_socket_timeout(settings) if blocking else 1.5
        assert kwargs["socket_timeout"] == expected
        await client.aclose()


async def test_a_pool_rides_out_a_pause_longer_than_the_command_timeout(
    own_redis: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.orchestrator import Orchestrator
    from shared.config import settings_env

    settings: Settings = make_settings(
        "test-unresponsive-pool:",
        tmp_path,
        redis_url=own_redis.url,
        redis_command_timeout=0.5,
        heartbeat_ttl=10.0,
        orchestrator_lease_ttl=10.0,
    )
    monkeypatch.setenv("MAHAVISHNU_SETTINGS_DIR", str(tmp_path / "no-settings"))
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    orch = Orchestrator(settings, log_dir=tmp_path / "logs")
    running = asyncio.create_task(orch.run())
    await orch.wait_ready()
    try:
        async with PoolManager(settings) as pools:
            pool_id = await pools.spawn_pool("local", name="paused", min_workers=1)
            before = await pools.execute_on_pool(pool_id, {"call": "add", "args": [1, 2]}, 20)
            assert before.output == 3
            with paused(own_redis):
                # the fault itself: several command timeouts long, shorter than heartbeat_ttl
                await asyncio.sleep(2.0)
            after = await pools.execute_on_pool(pool_id, {"call": "add", "args": [2, 3]}, 30)
            assert (after.status, after.output) == ("completed", 5)
            assert after.worker_id == before.worker_id  # the same worker: it never gave up
    finally:
        orch.request_stop()
        await running
        await delete_prefix(settings.redis_url, settings.key_prefix)
