"""Recording final results: once per task, announced once (on the standalone server and on the
cluster: the `settings` fixture runs on both)."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from shared import finals as finals_module
from shared.codec import ResultShare, decode
from shared.config import Settings
from shared.connection import connect, decode_hash
from shared.finals import FinalResult, finalize_results
from shared.models import PoolSpec, PoolStatus, TaskResult, TaskSpec, TaskStatus, new_id
from shared.scripts import Scripts
from shared.state import pool_hash_fields

POOL = "p-finals"


@pytest.fixture
def mode_settings(settings: Settings) -> Settings:
    """The suite's settings."""
    return settings


def final(
    status: TaskStatus = TaskStatus.COMPLETED,
    *,
    spec: TaskSpec | None = None,
    history: list[str] | None = None,
    share_with: list[str] | None = None,
) -> FinalResult:
    task_id = new_id("t")
    result = TaskResult(
        task_id=task_id,
        pool_id=POOL,
        worker_id="w-1",
        status=status,
        output="out",
        error=None if status is TaskStatus.COMPLETED else "boom",
        attempts=1,
        duration=0.25,
        finished_at=time.time(),
    )
    return FinalResult(
        result,
        "c-1",
        "echo()",
        ["t1"],
        token=f"w-1/{task_id}",
        history=history or [],
        spec=spec,
        share_with=share_with or [],
    )


@pytest.mark.parametrize("script_bytes", [8 << 20, 1], ids=["one-call", "a-call-each"])
async def test_a_batch_is_recorded_and_announced_once_even_when_written_twice(
    mode_settings: Settings,
    redis: aioredis.Redis,
    script_bytes: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(finals_module, "BATCH_SCRIPT_BYTES", script_bytes)
    keys = mode_settings.keys
    client = connect(mode_settings, retries=0)
    scripts = Scripts(client)
    finals = [final() for _ in range(3)] + [final(TaskStatus.FAILED)]
    await redis.xadd(keys.pool_tasks(POOL), {"x": "1"})
    entry_ids = [entry_id for entry_id, _ in await redis.xrange(keys.pool_tasks(POOL))]
    await redis.xgroup_create(keys.pool_tasks(POOL), "workers", id="0")
    await redis.xreadgroup("workers", "w-1", {keys.pool_tasks(POOL): ">"})
    try:
        ack = (keys.pool_tasks(POOL), "workers", entry_ids)
        first = await finalize_results(client, scripts, mode_settings, finals, ack=ack)
        again = await finalize_results(client, scripts, mode_settings, finals, ack=ack)
    finally:
        await client.aclose()
    assert first == [True, True, True, True]
    assert again == [False, False, False, False]
    replies = await redis.xrange(keys.replies("c-1"))
    assert len(replies) == 4
    shared = decode(replies[0][1])
    assert isinstance(shared, ResultShare) and shared.result == finals[0].result
    assert await redis.xlen(keys.events) == 4
    assert await redis.xlen(keys.pool_memory(POOL)) == 4
    load = decode_hash(await redis.hgetall(keys.pool_load(POOL)))
    assert (load["completed"], load["failed"], float(load["total_ms"])) == ("3", "1", 750.0)
    task = decode_hash(await redis.hgetall(keys.pool_task(POOL, finals[3].result.task_id)))
    assert (task["status"], task["error"], task["worker"]) == ("failed", "boom", "w-1")
    assert task["announced"] == "1"
    assert await redis.ttl(keys.pool_task(POOL, finals[0].result.task_id)) > 0
    assert await redis.ttl(keys.replies("c-1")) > 0
    assert await redis.xlen(keys.pool_tasks(POOL)) == 0
    assert (await redis.xpending(keys.pool_tasks(POOL), "workers"))["pending"] == 0


async def test_dead_letters_and_shares_are_written_with_the_result(
    mode_settings: Settings, redis: aioredis.Redis
) -> None:
    keys = mode_settings.keys
    spec = TaskSpec(prompt="again")
    dead = final(TaskStatus.DEAD_LETTERED, spec=spec, history=["attempt 1: boom"])
    open_pool, full_pool = "p-open", "p-full"
    for pool_id, inbox_max in ((open_pool, 5), (full_pool, 1)):
        pool = PoolSpec(id=pool_id, name=pool_id, inbox_max=inbox_max)
        await redis.hset(keys.pool(pool_id), mapping=pool_hash_fields(pool, PoolStatus.RUNNING))
    await redis.xadd(keys.pool_inbox(full_pool), {"x": "1"})
    sharing = final(share_with=[open_pool, full_pool, "p-missing"])
    client = connect(mode_settings, retries=0)
    try:
        await finalize_results(client, Scripts(client), mode_settings, [dead, sharing])
    finally:
        await client.aclose()
    letters = [fields for _, fields in await redis.xrange(keys.dlq)]
    by_task: dict[str, list[str]] = {}
    for letter in letters:
        by_task.setdefault(letter[b"task"].decode(), []).append(letter[b"reason"].decode())
    assert by_task[dead.result.task_id] == ["boom"]
    assert TaskSpec.model_validate_json(letters[0][b"spec"]) == spec
    assert sorted(by_task[sharing.result.task_id]) == [
        f"result not shared with pool {full_pool}: inbox of pool '{full_pool}' is full; "
        "the result was not sent",
        "result not shared with pool p-missing: no pool with id 'p-missing'",
    ]
    inbox = await redis.xrange(keys.pool_inbox(open_pool))
    assert len(inbox) == 1
    shared = decode(inbox[0][1])
    assert isinstance(shared, ResultShare) and shared.result.task_id == sharing.result.task_id
