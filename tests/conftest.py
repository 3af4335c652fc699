"""Shared fixtures: settings under a unique key prefix on the real Redis, an in-process
orchestrator, and pools of real worker processes."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import redis.asyncio as aioredis

from shared.config import Settings, load_settings
from shared.models import new_id

pytest_plugins = ["tests.standins.fixtures"]  # session_buddy, akosha: MCP services of issues 11/13

# pytest-xdist's workers inherit COLUMNS=80 / LINES=24; the CLI sizes its tables by COLUMNS when
# set (else wide for pipes, `orchestrator/cli/render.py`), so the CLIs tests start would wrap
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)

# hypothesis's 200 ms deadline per example measures the machine's load, not the code: the suite
# runs on two xdist workers beside Redis servers and worker processes
hypothesis.settings.register_profile("mahavishnu", deadline=None)
hypothesis.settings.load_profile("mahavishnu")

REDIS_URL = os.environ.get("MAHAVISHNU_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BROKERS = [
    name
    for name in os.environ.get("MAHAVISHNU_TEST_BROKERS", "standalone,cluster").split(",")
    if name
]
"""Where the integration suites run: the standalone Redis at REDIS_URL and a local 3-primary
Redis Cluster the fixtures start (`MAHAVISHNU_TEST_BROKERS=standalone` for one only)."""


def make_settings(prefix: str, tmp_path: Path, **overrides: Any) -> Settings:
    """Fast-ticking settings for tests under `prefix`."""
    values: dict[str, Any] = {
        "redis_url": REDIS_URL,
        "key_prefix": prefix,
        "heartbeat_interval": 0.2,
        "heartbeat_ttl": 2.0,
        "supervise_interval": 0.1,
        "drain_grace": 5.0,
        "worker_block_ms": 200,
        "retry_backoff_base": 0.05,
        "retry_backoff_max": 0.2,
        "orchestrator_lease_ttl": 2.0,
        "spawn_timeout": 20.0,
        "embedded_broker_dir": tmp_path / "redis",
    }
    values.update(overrides)
    return load_settings(**values)


def client_for(url: str) -> Any:
    """A plain async client for a test URL (a cluster client for `redis+cluster://`)."""
    from shared.connection import connect

    return connect(load_settings(redis_url=url, key_prefix="unused:"))


async def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key under `prefix` (on every primary of a cluster)."""
    client = client_for(url)
    try:
        batch = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        for key in batch:
            await client.delete(key)
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real local Redis Cluster of three primaries for the whole session."""
    from tests.cluster_servers import start_cluster

    cluster = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(params=BROKERS)
def broker_url(request: pytest.FixtureRequest) -> str:
    """The Redis URL a test runs against: once on the standalone server, once on the cluster."""
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster").url)
    return REDIS_URL


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return f"test-{new_id('x')}:"


@pytest.fixture
async def settings(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker_url: str
) -> AsyncIterator[Settings]:
    """Settings on the real Redis under a unique prefix; the keys are deleted afterwards.

    The same values go into the environment, so processes started by the test see them too.
    """
    from shared.config import settings_env

    monkeypatch.setenv("MAHAVISHNU_SETTINGS_DIR", str(tmp_path / "no-settings"))
    value = make_settings(prefix, tmp_path, redis_url=broker_url)
    for name, env_value in settings_env(value).items():
        monkeypatch.setenv(name, env_value)
    yield value
    await delete_prefix(value.redis_url, prefix)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the test Redis (a cluster client on the cluster)."""
    client = client_for(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def orchestrator(settings: Settings, tmp_path: Path) -> AsyncIterator[Any]:
    """An orchestrator running in-process; its local workers are stopped afterwards."""
    from orchestrator.orchestrator import Orchestrator

    orch = Orchestrator(settings, log_dir=tmp_path / "logs")
    task = asyncio.create_task(orch.run())
    await orch.wait_ready()
    yield orch
    orch.request_stop()
    await task


@pytest.fixture
async def manager(settings: Settings) -> AsyncIterator[Any]:
    """A PoolManager client."""
    from shared.client import PoolManager

    async with PoolManager(settings) as pm:
        yield pm


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "condition"
) -> None:
    """Re-check a state that has no event of its own (e.g. a task reaching `running`) until true.

    Each check is a Redis round trip; the short pause only keeps the loop from spinning.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


REPO_ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("mahavishnu"))


async def run_cli(
    url: str, *args: str, command_timeout: float, limit: float = 120.0
) -> tuple[int, str, str, float]:
    """Run `mahavishnu ARGS` as its own process against `url`, with no settings but the Redis
    URL and `redis_command_timeout`; return (exit code, stdout, stderr, seconds it took)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAHAVISHNU_")}
    env.update(
        {
            "MAHAVISHNU_REDIS_URL": url,
            "MAHAVISHNU_REDIS_COMMAND_TIMEOUT": str(command_timeout),
            "MAHAVISHNU_EMBEDDED_BROKER": "false",
            "MAHAVISHNU_SETTINGS_DIR": str(REPO_ROOT / "no-such-settings"),
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"mahavishnu {' '.join(args)} still runs after {limit:g} s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode(), time.monotonic() - started
