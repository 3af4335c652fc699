"""The Lua side agrees with the state machines of shared/models.py, checked on the real Redis:
every task status is tried against the scripts that guard final tasks, every pool status
against the scripts that decide whether a pool takes work."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from shared.config import Settings
from shared.models import ACCEPTING_STATUSES, FINAL_STATUSES, PoolStatus, TaskStatus
from shared.scripts import Scripts, add_counted

START_SKIP, START_RUN = 0, 1


@pytest.mark.parametrize("status", list(TaskStatus))
async def test_start_and_set_skip_exactly_the_final_statuses(
    status: TaskStatus, settings: Settings, redis: aioredis.Redis
) -> None:
    scripts = Scripts(redis)
    key = settings.keys.task(f"t-{status}")
    for start in (
        lambda: scripts.start_task(keys=[key], args=["w1", "1.0", 1]),
        lambda: scripts.start_batch(keys=[key], args=["w1", "1.0", 1]),
    ):
        await redis.hset(key, mapping={"status": str(status)})
        verdict = await start()
        verdict = verdict[0] if isinstance(verdict, list) else verdict
        assert verdict == (START_SKIP if status in FINAL_STATUSES else START_RUN), status
        after = (await redis.hget(key, "status")) or b""
        assert after.decode() == (str(status) if status in FINAL_STATUSES else "running")
    await redis.hset(key, mapping={"status": str(status)})
    written = await scripts.set_task_fields(keys=[key], args=["status", "queued"])
    assert written == (0 if status in FINAL_STATUSES else 1)


@pytest.mark.parametrize("status", list(PoolStatus))
async def test_submits_go_only_to_pools_that_take_work(
    status: PoolStatus, settings: Settings, redis: aioredis.Redis
) -> None:
    scripts = Scripts(redis)
    pool_key, stream = settings.keys.pool("p1"), settings.keys.pool_tasks("p1")
    await redis.hset(pool_key, mapping={"status": str(status)})
    args: list[object] = ["pool", 100, 60, 1]
    add_counted(args, {"status": "queued"})
    add_counted(args, {"type": "TASK_DELEGATE"})
    takes = status in ACCEPTING_STATUSES
    if takes:
        await scripts.submit_batch(keys=[pool_key, stream, settings.keys.task("t1")], args=args)
        assert await redis.xlen(stream) == 1
    else:
        with pytest.raises(aioredis.ResponseError, match=f"POOLDOWN pool is {status}"):
            await scripts.submit_batch(keys=[pool_key, stream, settings.keys.task("t1")], args=args)
        assert await redis.xlen(stream) == 0
