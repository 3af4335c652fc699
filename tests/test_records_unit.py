"""What an orchestrator writes (orchestrator/records.py), without Redis: the final results of tasks
it gives up on, where their state lives, which tasks count as finished, pool statuses, dead
letters of unusable entries.

`finalize_results` is replaced by a recorder (what it writes is tests/test_finals.py's subject);
the Redis is tests/unit_fakes.py's FakeRedis, answering Records with redis-py 8 RESP2 reply
shapes (`decode_responses=False`): HGET gives bytes or None, HMGET a list of bytes or None."""

from __future__ import annotations

import time
from typing import Any

import pytest

from orchestrator.records import BadEntry, Records
from shared.codec import StatusUpdate, TaskDelegate, decode
from shared.config import Settings
from shared.keys import ORCHESTRATOR_GROUP, WORKER_GROUP
from shared.models import FINAL_STATUSES, PoolStatus, TaskSpec, TaskStatus
from shared.scripts import Scripts
from tests import unit_fakes
from tests.unit_fakes import FakeRedis, Finalized, as_reply, record_finals

pytestmark = pytest.mark.unit  # needs no Redis: `make test-unit`

OWNER = "o-1"
offline_settings = unit_fakes.offline_settings  # a fixture shared with the other unit tests


@pytest.fixture
def finalized(monkeypatch: pytest.MonkeyPatch) -> Finalized:
    """Each call of `finalize_results`: its final results and keyword arguments."""
    return record_finals(monkeypatch).calls


def records(redis: FakeRedis, settings: Settings) -> Records:
    return Records(redis, Scripts(redis), settings, OWNER)


def delegate(attempt: int = 1, **task: Any) -> TaskDelegate:
    history = [f"attempt {n}: boom" for n in range(1, attempt)]
    return TaskDelegate(
        task=TaskSpec(call="add", args=[1, 2], **task), attempt=attempt, history=history
    )


async def test_a_failure_becomes_the_final_result_of_the_tasks_last_attempt(
    offline_settings: Settings, finalized: Finalized
) -> None:
    msg = delegate(attempt=2, reply_to="c-1", tags=["a", "b"], pool_id="p1")
    before = time.time()
    await records(FakeRedis(), offline_settings).fail([(msg, "no pool")], pool_id="p1")

    [([final], _)] = finalized
    result = final.result
    assert (result.task_id, result.pool_id, result.status) == (msg.task.id, "p1", TaskStatus.FAILED)
    assert (result.error, result.attempts) == ("no pool", 2)
    assert result.finished_at is not None and before <= result.finished_at <= time.time()
    assert final.reply_to == "c-1"  # the submitter's reply stream gets it
    assert final.summary == msg.task.describe() and final.tags == ["a", "b"]
    assert final.spec == msg.task  # kept in a dead letter, so it can be requeued
    assert final.submitted_at == msg.task.submitted_at


async def test_a_failures_token_names_the_orchestrator_the_task_and_the_attempt(
    offline_settings: Settings, finalized: Finalized
) -> None:
    first = delegate(attempt=1)
    later = TaskDelegate(task=first.task, attempt=2)
    rec = records(FakeRedis(), offline_settings)
    await rec.fail([(first, "x"), (later, "x")], pool_id="p1")
    await rec.fail([(first, "y")], pool_id="p1")

    [(finals, _), (retried, _)] = finalized
    assert [f.token for f in finals] == [f"o-1/{first.task.id}/1", f"o-1/{first.task.id}/2"]
    assert retried[0].token == finals[0].token  # a repeated write is recognised as the same


async def test_a_failures_history_ends_with_its_reason(
    offline_settings: Settings, finalized: Finalized
) -> None:
    msg = delegate(attempt=3)
    await records(FakeRedis(), offline_settings).fail([(msg, "pool p1 is gone")], pool_id="p1")
    [([final], _)] = finalized
    assert final.history == ["attempt 1: boom", "attempt 2: boom", "pool p1 is gone"]


async def test_a_failure_can_be_recorded_as_dead_lettered(
    offline_settings: Settings, finalized: Finalized
) -> None:
    rec = records(FakeRedis(), offline_settings)
    await rec.fail([(delegate(), "x")], status=TaskStatus.DEAD_LETTERED, pool_id="p1")
    [([final], _)] = finalized
    assert final.result.status is TaskStatus.DEAD_LETTERED


async def test_with_a_pool_every_failed_task_has_its_state_in_that_pool(
    offline_settings: Settings, finalized: Finalized
) -> None:
    redis = FakeRedis()
    await records(redis, offline_settings).fail(
        [(delegate(), "x"), (delegate(), "y")], pool_id="p1"
    )
    [(finals, _)] = finalized
    assert [f.home for f in finals] == ["p1", "p1"]
    assert redis.log == []  # nothing to look up


async def test_without_a_pool_each_failed_tasks_home_is_read_from_its_task_hash(
    offline_settings: Settings, finalized: Finalized
) -> None:
    keys = offline_settings.keys
    routed, fresh = delegate(), delegate()
    homes = {keys.task(routed.task.id): b"p9"}  # `fresh` was never routed: no home
    redis = FakeRedis(hget=lambda key, field: homes.get(key))
    await records(redis, offline_settings).fail([(routed, "x"), (fresh, "y")])

    [(finals, _)] = finalized
    assert [f.home for f in finals] == ["p9", ""]  # "": the state is in the task hash itself
    assert [f.result.pool_id for f in finals] == [None, None]
    assert [args for _, args, _ in redis.calls("hget")] == [
        (keys.task(routed.task.id), "home"),
        (keys.task(fresh.task.id), "home"),
    ]


async def test_given_homes_are_used_without_a_look_up(
    offline_settings: Settings, finalized: Finalized
) -> None:
    redis = FakeRedis()
    await records(redis, offline_settings).fail([(delegate(), "x")], homes=["p7"])
    [([final], _)] = finalized
    assert final.home == "p7" and final.result.pool_id is None
    assert redis.log == []


async def test_a_failures_entries_are_acknowledged_with_its_results(
    offline_settings: Settings, finalized: Finalized
) -> None:
    ack = (offline_settings.keys.ingress, ORCHESTRATOR_GROUP, [b"1-0"])
    await records(FakeRedis(), offline_settings).fail([(delegate(), "x")], pool_id="p1", ack=ack)
    [(_, kwargs)] = finalized
    assert kwargs["ack"] == ack


async def test_homes_of_no_tasks_send_nothing(offline_settings: Settings) -> None:
    redis = FakeRedis()
    assert await records(redis, offline_settings).homes([]) == []
    assert redis.log == []


@pytest.mark.parametrize("status", list(TaskStatus))
async def test_a_task_is_finished_exactly_when_its_status_is_final(
    offline_settings: Settings, status: TaskStatus
) -> None:
    redis = FakeRedis(hmget=[str(status).encode(), b"1"])
    found = await records(redis, offline_settings).finished("p1", [msg := delegate()])
    assert found == ({msg.task.id: True} if status in FINAL_STATUSES else {})


async def test_a_finished_task_says_whether_its_result_was_announced(
    offline_settings: Settings,
) -> None:
    keys = offline_settings.keys
    said, unsaid, running = delegate(), delegate(), delegate()
    state = {
        keys.pool_task("p1", said.task.id): [b"completed", b"1"],
        keys.pool_task("p1", unsaid.task.id): [b"failed", b"0"],
        keys.pool_task("p1", running.task.id): [b"running", None],
    }
    redis = FakeRedis(hmget=lambda key, fields: state.get(key, [None, None]))
    found = await records(redis, offline_settings).finished("p1", [said, unsaid, running])

    assert found == {said.task.id: True, unsaid.task.id: False}
    assert {args[1] == ["status", "announced"] for _, args, _ in redis.calls("hmget")} == {True}


async def test_finished_of_no_messages_sends_nothing(offline_settings: Settings) -> None:
    redis = FakeRedis()
    assert await records(redis, offline_settings).finished("p1", []) == {}
    assert redis.log == []


async def test_a_pool_status_is_written_only_if_still_expected_then_announced(
    offline_settings: Settings,
) -> None:
    redis = FakeRedis(set_pool_status=1)
    written = await records(redis, offline_settings).set_pool_status(
        "p1",
        PoolStatus.DEGRADED,
        "0/2 workers",
        expect=[PoolStatus.RUNNING, PoolStatus.SCALING],
        restarts=3,
    )
    assert written is True
    [(_, (keys, args), _)] = redis.calls("set_pool_status")
    assert keys == [offline_settings.keys.pool("p1")]
    assert args == [
        "running,scaling",
        "status",
        "degraded",
        "detail",
        "0/2 workers",
        "restarts",
        "3",
    ]
    [(_, (stream, fields), _)] = redis.calls("xadd")
    assert stream == offline_settings.keys.events
    assert decode(as_reply(fields)) == StatusUpdate(
        pool_id="p1", status=PoolStatus.DEGRADED, detail="0/2 workers"
    )


async def test_a_pool_status_not_written_is_not_announced(offline_settings: Settings) -> None:
    redis = FakeRedis(set_pool_status=0)  # the status moved on (e.g. to closing) meanwhile
    rec = records(redis, offline_settings)
    assert (
        await rec.set_pool_status("p1", PoolStatus.RUNNING, expect=[PoolStatus.DEGRADED]) is False
    )
    assert redis.calls("xadd") == []


async def test_events_go_on_the_events_stream_bounded_approximately(
    offline_settings: Settings,
) -> None:
    redis = FakeRedis()
    pipe = redis.pipeline()
    records(redis, offline_settings).publish(pipe, StatusUpdate(pool_id="p1"))
    [(name, (stream, _), kwargs)] = pipe.command_stack
    assert (name, stream) == ("xadd", offline_settings.keys.events)
    assert kwargs == {"maxlen": offline_settings.events_max_len, "approximate": True}


async def test_unusable_entries_are_dead_lettered_with_the_reason_and_acknowledged(
    offline_settings: Settings,
) -> None:
    redis = FakeRedis()
    pipe = redis.pipeline()
    stream = offline_settings.keys.pool_tasks("p1")
    bad: list[BadEntry] = [
        (b"1-0", "entry has no 'type' field", {b"task": b"t-1"}),
        (b"2-0", "unknown message type 'X'", {b"type": b"X"}),
    ]
    records(redis, offline_settings).queue_malformed(
        pipe, stream, bad, group=WORKER_GROUP, pool_id="p1"
    )
    await pipe.execute()

    letters = [args for _, args, _ in redis.calls("xadd")]
    assert [s for s, _ in letters] == [offline_settings.keys.dlq] * 2
    assert [r["reason"] for _, r in letters] == [
        f"malformed entry 1-0 on {stream}: entry has no 'type' field",
        f"malformed entry 2-0 on {stream}: unknown message type 'X'",
    ]
    assert [(r["task"], r["pool"]) for _, r in letters] == [("t-1", "p1"), ("", "p1")]
    assert [args for _, args, _ in redis.calls("xack")] == [(stream, WORKER_GROUP, b"1-0", b"2-0")]
    assert [args for _, args, _ in redis.calls("xdel")] == [(stream, b"1-0", b"2-0")]


async def test_unusable_entries_are_acknowledged_in_the_orchestrators_group_by_default(
    offline_settings: Settings,
) -> None:
    redis = FakeRedis()
    pipe = redis.pipeline()
    stream = offline_settings.keys.ingress
    records(redis, offline_settings).queue_malformed(pipe, stream, [(b"1-0", "bad", {})])
    await pipe.execute()
    assert [args for _, args, _ in redis.calls("xack")] == [(stream, ORCHESTRATOR_GROUP, b"1-0")]


async def test_no_unusable_entries_queue_nothing(offline_settings: Settings) -> None:
    redis = FakeRedis()
    pipe = redis.pipeline()
    records(redis, offline_settings).queue_malformed(pipe, offline_settings.keys.ingress, [])
    assert len(pipe) == 0
