"""The one retry policy (shared/retries.py): backoff, history cap, the delayed-set member, and
what a queued retry writes, on the real Redis."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from shared.codec import TaskDelegate
from shared.config import Settings
from shared.errors import MalformedMessage
from shared.models import TaskSpec
from shared.retries import (
    HISTORY_CAP,
    dead_letter_reason,
    queue_retry,
    read_retry_member,
    retry_member,
    with_line,
)
from shared.scripts import Scripts


@pytest.mark.unit
def test_history_keeps_the_last_lines() -> None:
    history = [f"attempt {i}" for i in range(HISTORY_CAP)]
    assert with_line(history, "new") == [*history[1:], "new"]


@pytest.mark.unit
def test_members_round_trip_and_garbage_is_malformed() -> None:
    again = TaskDelegate(task=TaskSpec(call="noop"), attempt=2, history=["attempt 1: x"])
    pool_id, msg = read_retry_member(retry_member("p1", again))
    assert pool_id == "p1" and isinstance(msg, TaskDelegate) and msg.attempt == 2
    with pytest.raises(MalformedMessage):
        read_retry_member(b"\x93not a member")


@pytest.mark.unit
def test_the_dead_letter_reason_says_it_once() -> None:
    assert dead_letter_reason(3, "boom") == "dead-lettered after 3 attempt(s); last error: boom"


async def test_a_queued_retry_waits_its_backoff_and_marks_the_task(
    settings: Settings, redis: aioredis.Redis
) -> None:
    msg = TaskDelegate(task=TaskSpec(call="noop"), attempt=1)
    key = settings.keys.pool_task("p1", msg.task.id)
    await redis.hset(key, mapping={"status": "running"})
    before = time.time()
    pipe = redis.pipeline(transaction=False)
    queue_retry(
        pipe,
        settings,
        Scripts(redis),
        msg,
        pool_id="p1",
        home="p1",
        line="attempt 1: lost",
        error="lost",
    )
    await Scripts(redis).execute(pipe)
    [(member, due)] = await redis.zrange(settings.keys.delayed, 0, -1, withscores=True)
    assert before <= due <= time.time() + settings.retry_backoff_base
    pool_id, again = read_retry_member(member)
    assert pool_id == "p1" and again.attempt == 2 and again.history == ["attempt 1: lost"]
    assert await redis.hmget(key, ["status", "error"]) == [b"retrying", b"lost"]
