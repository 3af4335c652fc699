"""The Lua side agrees with the state machines of shared/models.py, checked on the real Redis
(standalone and cluster): every task status is tried against the scripts that guard final tasks,
every pool status against the scripts that decide whether a pool takes work."""

from __future__ import annotations

from typing import Any

import pytest

from shared.config import Settings
from shared.models import ACCEPTING_STATUSES, FINAL_STATUSES, PoolStatus, TaskStatus
from shared.scripts import (
    FINAL_DONE,
    FINAL_NEW,
    FINAL_STORED,
    START_ANNOUNCE,
    START_RUN,
    START_SKIP,
    Scripts,
    packed_result,
    packed_task,
)


@pytest.mark.parametrize("status", list(TaskStatus))
async def test_start_and_set_skip_exactly_the_final_statuses(
    status: TaskStatus, settings: Settings, redis: Any
) -> None:
    scripts = Scripts(redis)
    key = settings.keys.pool_task("p1", f"t-{status}")
    await redis.hset(key, mapping={"status": str(status), "announced": "1"})
    verdict = (await scripts.start_batch(keys=[key], args=["w1", "1.0", 1]))[0]
    assert verdict == (START_SKIP if status in FINAL_STATUSES else START_RUN), status
    after = (await redis.hget(key, "status")) or b""
    assert after.decode() == (str(status) if status in FINAL_STATUSES else "running")
    await redis.hset(key, mapping={"status": str(status), "announced": "0"})
    verdict = (await scripts.start_batch(keys=[key], args=["w1", "1.0", 1]))[0]
    assert verdict == (START_ANNOUNCE if status in FINAL_STATUSES else START_RUN), status
    await redis.hset(key, mapping={"status": str(status)})
    written = await scripts.set_task_fields(keys=[key], args=["status", "queued"])
    assert written == (0 if status in FINAL_STATUSES else 1)


@pytest.mark.parametrize("status", list(TaskStatus))
async def test_complete_records_only_tasks_that_are_not_final(
    status: TaskStatus, settings: Settings, redis: Any
) -> None:
    scripts = Scripts(redis)
    key = settings.keys.pool_task("p1", f"t-{status}")

    def call(token: str, batch: str = "b1") -> tuple[list[str], list[Any]]:
        args: list[Any] = [60, 100, 0, 0, 1, batch]
        args.append(packed_result(1, token, {"status": "completed", "result": "r"}))
        return [key], args

    await redis.hset(key, mapping={"status": str(status), "final_token": "old"})
    keys, args = call("new")
    (verdict,) = await scripts.complete_batch(keys=keys, args=args)
    assert verdict == (FINAL_STORED if status in FINAL_STATUSES else FINAL_NEW), status
    keys, args = call("old" if status in FINAL_STATUSES else "new", batch="b2")
    (again,) = await scripts.complete_batch(keys=keys, args=args)
    assert again == FINAL_NEW  # the same writer retrying: its result is announced (again),
    assert await redis.hget(key, "announce_token") == b"b2"  # under the retry's batch token
    await redis.hset(key, "announced", "1")
    (done,) = await scripts.complete_batch(keys=keys, args=args)
    assert done == FINAL_DONE


@pytest.mark.parametrize("status", list(TaskStatus))
async def test_a_claim_drops_only_final_or_cancelled_tasks(
    status: TaskStatus, settings: Settings, redis: Any
) -> None:
    scripts = Scripts(redis)
    key = settings.keys.task(f"t-{status}")

    async def claim(pool: str, force: str = "0") -> list[bytes]:
        (verdict,) = await scripts.claim_route(keys=[key], args=[60, "1-0", pool, force])
        return list(verdict)

    await redis.hset(key, mapping={"status": str(status)})
    if status in FINAL_STATUSES:
        assert await claim("p1") == [b"final", b""]
    else:
        assert await claim("p1") == [b"to", b"p1"]
        # the same entry again (its orchestrator died): the pool chosen then
        assert await claim("p2") == [b"to", b"p1"]
        # it refused the entry: it may go elsewhere
        assert await claim("p2", force="1") == [b"to", b"p2"]
        await redis.hset(key, "cancel_requested", "1")
        assert await claim("p3") == [b"cancelled", b"p2"]


def _submit_args(count: int = 1) -> list[Any]:
    args: list[Any] = ["pool", 100, 60, count, count]
    for _ in range(count):
        args.append(packed_task("", {"status": "queued"}, {"type": "TASK_DELEGATE"}))
    return args


@pytest.mark.parametrize("status", list(PoolStatus))
async def test_submits_and_moves_go_only_to_pools_that_take_work(
    status: PoolStatus, settings: Settings, redis: Any
) -> None:
    scripts = Scripts(redis)
    keys = settings.keys
    pool_key, stream = keys.pool("p1"), keys.pool_tasks("p1")
    await redis.hset(pool_key, mapping={"status": str(status)})
    takes = status in ACCEPTING_STATUSES
    submit_keys = [pool_key, stream, keys.pool_task("p1", "t1")]
    if takes:
        await scripts.submit_batch(keys=submit_keys, args=_submit_args())
        assert await redis.xlen(stream) == 1
    else:
        with pytest.raises(Exception, match=f"POOLDOWN pool is {status}"):
            await scripts.submit_batch(keys=submit_keys, args=_submit_args())
        assert await redis.xlen(stream) == 0
    args: list[Any] = [100, 60, 1]
    args.append(packed_task("5-0", {"status": "queued", "pool": "p1"}, {"type": "TASK_DELEGATE"}))
    forward_keys = [pool_key, stream, keys.pool_task("p1", "t2")]
    verdicts, backlog = await scripts.forward(keys=forward_keys, args=args)
    assert verdicts == [1 if takes else 0], status
    assert backlog == (2 if takes else 0)
    # a repeated move of the same ingress entry is a no-op
    verdicts, backlog = await scripts.forward(keys=forward_keys, args=args)
    assert verdicts == [2 if takes else 0]
    assert backlog == (2 if takes else 0)
