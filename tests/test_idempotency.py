"""Idempotency keys on the real Redis, on both submit paths (batch scripts, and the per-slot
scripts of `redis_cluster: true`): the same request gets the first task, a different one is
refused with IdempotencyConflict naming the key and the first task."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shared.client import PoolManager
from shared.config import Settings
from shared.connection import Redis
from shared.errors import IdempotencyConflict
from shared.models import PoolSpec, PoolStatus
from shared.state import pool_hash_fields
from tests.conftest import delete_prefix, make_settings


@pytest.fixture
async def settings(
    broker_url: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Settings]:
    monkeypatch.setenv("MAHAVISHNU_SETTINGS_DIR", str(tmp_path / "no-settings"))
    value = make_settings(prefix, tmp_path, redis_url=broker_url)
    yield value
    await delete_prefix(value.redis_url, prefix)


async def fake_pool(redis: Redis, settings: Settings, pool_id: str) -> None:
    """A running pool's hash, as an orchestrator writes it (no workers: its tasks stay queued)."""
    spec = PoolSpec(id=pool_id, name=pool_id)
    await redis.hset(
        settings.keys.pool(pool_id), mapping=pool_hash_fields(spec, PoolStatus.RUNNING)
    )
    await redis.sadd(settings.keys.pools, pool_id)


async def test_the_same_request_gets_the_first_task_a_different_one_is_refused(
    manager: PoolManager, redis: Redis, settings: Settings
) -> None:
    add = {"call": "add", "args": [1, 2], "kwargs": {"a": 1, "b": 2}, "idempotency_key": "job"}
    first = await manager.submit(add)
    # options that do not change what runs, and the order of kwargs, do not matter
    same = {**add, "kwargs": {"b": 2, "a": 1}, "timeout": 9, "max_attempts": 1, "tags": ["x"]}
    assert await manager.submit(same) == first
    async with PoolManager(settings) as other:  # another client: another reply_to
        assert await other.submit(add) == first
    for differs in (
        {**add, "call": "sleep"},
        {**add, "args": [1, 3]},
        {**add, "kwargs": {"a": 1}},
        {**add, "labels": {"gpu": "true"}},
        {"prompt": "add 1 and 2", "idempotency_key": "job"},
    ):
        with pytest.raises(IdempotencyConflict) as caught:
            await manager.submit(differs)
        assert f"idempotency_key='job' already names task {first}" in str(caught.value)
        assert (caught.value.key, caught.value.task_id) == ("job", first)
    with pytest.raises(IdempotencyConflict, match=first):
        await manager.route_task({**add, "args": [5, 5]}, timeout=1)
    assert await redis.xlen(settings.keys.ingress) == 1


async def test_the_target_pool_is_part_of_the_request(
    manager: PoolManager, redis: Redis, settings: Settings
) -> None:
    await fake_pool(redis, settings, "pa")
    await fake_pool(redis, settings, "pb")
    task = {"prompt": "hello", "idempotency_key": "k"}
    first = await manager.submit(task, pool_id="pa")
    assert await manager.submit(task, pool_id="pa") == first
    with pytest.raises(IdempotencyConflict, match=f"'k' already names task {first}"):
        await manager.submit(task, pool_id="pb")
    with pytest.raises(IdempotencyConflict, match=first):
        await manager.submit(task)  # routed: no pool
    with pytest.raises(IdempotencyConflict, match=first):
        await manager.execute_on_pool("pb", task, timeout=1)
    assert await redis.xlen(settings.keys.pool_tasks("pa")) == 1
    assert await redis.xlen(settings.keys.pool_tasks("pb")) == 0


async def test_one_key_twice_in_a_batch(
    manager: PoolManager, redis: Redis, settings: Settings
) -> None:
    ids = await manager.submit_many(
        [
            {"call": "add", "args": [1, 2], "idempotency_key": "k"},
            {"call": "noop", "idempotency_key": "other"},
            {"call": "add", "args": [1, 2], "idempotency_key": "k", "timeout": 5},
        ]
    )
    assert ids[0] == ids[2] != ids[1]
    assert await redis.xlen(settings.keys.ingress) == 2

    batch: list[dict[str, Any]] = [
        {"call": "noop"},
        {"call": "add", "args": [1, 2], "idempotency_key": "fresh"},
        {"call": "add", "args": [5, 5], "idempotency_key": "fresh"},
    ]
    with pytest.raises(IdempotencyConflict, match="idempotency_key='fresh' already names task"):
        await manager.submit_many(batch)
    assert await redis.xlen(settings.keys.ingress) == 2  # nothing of that batch was queued
    assert not await redis.exists(settings.keys.idempotency("fresh"))  # nor its key reserved
    (again,) = await manager.submit_many([batch[2]])
    assert await manager.submit(batch[2]) == again


async def test_a_key_stored_without_a_digest_matches_any_request(
    manager: PoolManager, redis: Redis, settings: Settings
) -> None:
    first = await manager.submit({"call": "noop"})
    await redis.set(settings.keys.idempotency("old"), first)  # as written before digests
    assert await manager.submit({"call": "add", "args": [1, 1], "idempotency_key": "old"}) == first
