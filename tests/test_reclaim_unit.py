"""Taking work back (orchestrator/reclaim.py) without Redis: which pending entries count as lost
or overdue, what a taken-back entry becomes, due retries and orphaned ingress entries.

The Redis here is tests/unit_fakes.py's FakeRedis, answering the reclaimer with replies shaped
as redis-py 8 gives them over RESP2 with `decode_responses=False` (checked against Redis 7.0):
XPENDING summary `{'pending': n, 'min': id, 'max': id, 'consumers': [{'name': b'w', 'pending':
n}]}`, XPENDING range `[{'message_id': id, 'consumer': b'w', 'time_since_delivered': ms,
'times_delivered': n}]`, XCLAIM/XRANGE `[(id, {field: value})]` (an entry deleted meanwhile is
left out of XCLAIM's reply by Redis 7)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

import orchestrator.reclaim as reclaim_module
import orchestrator.records as records_module
from orchestrator.reclaim import Reclaimer
from orchestrator.records import Records
from shared.codec import TaskDelegate, decode, encode
from shared.config import Settings
from shared.finals import FinalResult
from shared.keys import ORCHESTRATOR_GROUP, WORKER_GROUP, Keys
from shared.models import PoolStatus, TaskSpec, TaskStatus
from shared.retries import dead_letter_reason, read_retry, retry_member
from shared.scripts import Scripts
from tests import unit_fakes
from tests.unit_fakes import FakeRedis, as_reply

pytestmark = pytest.mark.unit  # needs no Redis: `make test-unit`

OWNER = "o-self"
# fixtures shared with the other unit tests (pytest finds them under these names)
offline_settings = unit_fakes.offline_settings
finalized = unit_fakes.finalized
announced = unit_fakes.announced_in(reclaim_module)


def reclaimer(redis: FakeRedis, settings: Settings) -> Reclaimer:
    return Reclaimer(Records(redis, Scripts(redis), settings, OWNER), lease_ms=2000)


def delegate(attempt: int = 1, max_attempts: int = 3, timeout: float = 300.0) -> TaskDelegate:
    task = TaskSpec(call="noop", pool_id="p1", timeout=timeout, max_attempts=max_attempts)
    return TaskDelegate(task=task, attempt=attempt)


def summary(*consumers: tuple[bytes, int]) -> dict[str, Any]:
    total = sum(n for _, n in consumers)
    return {
        "pending": total,
        "min": b"1-0" if total else None,
        "max": b"9-0" if total else None,
        "consumers": [{"name": name, "pending": n} for name, n in consumers],
    }


def held(entry_id: bytes, consumer: bytes, idle_ms: int) -> dict[str, Any]:
    return {
        "message_id": entry_id,
        "consumer": consumer,
        "time_since_delivered": idle_ms,
        "times_delivered": 1,
    }


def pending_range(
    by_consumer: dict[bytes, list[dict[str, Any]]], idle: list[dict[str, Any]]
) -> Callable[..., list[dict[str, Any]]]:
    """XPENDING range: a consumer's entries when it is named, else the `idle` entries."""

    def reply(*args: Any, consumername: str | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        if consumername is None:
            return idle
        return by_consumer.get(consumername.encode(), [])

    return reply


def claiming(entries: dict[bytes, dict[bytes, bytes]]) -> Callable[..., list[Any]]:
    """XCLAIM: the requested entries that still exist, in the order asked."""

    def reply(*args: Any, message_ids: list[bytes], **kwargs: Any) -> list[Any]:
        return [(i, entries[i]) for i in message_ids if i in entries]

    return reply


def ranging(entries: dict[bytes, dict[bytes, bytes]]) -> Callable[..., list[Any]]:
    """XRANGE of one id (min = max)."""

    def reply(*args: Any, min: bytes, max: bytes, **kwargs: Any) -> list[Any]:
        return [(min, entries[min])] if min in entries else []

    return reply


def claimed_ids(redis: FakeRedis) -> list[bytes]:
    return [i for _, _, kw in redis.calls("xclaim") for i in kw["message_ids"]]


def queued_retries(redis: FakeRedis) -> list[tuple[str, str, Any]]:
    """(pool, home, message) of every member added to the delayed set."""
    return [read_retry(m) for _, (_, members), _ in redis.calls("zadd") for m in members]


def acked(redis: FakeRedis) -> list[bytes]:
    return [i for _, (_, _, *ids), _ in redis.calls("xack") for i in ids]


STREAM = Keys("unit:").pool_tasks("p1")  # the prefix of `offline_settings`


async def test_entries_of_a_consumer_not_live_are_taken_back_as_lost_with_their_worker(
    offline_settings: Settings,
) -> None:
    msg = delegate()
    entries = {b"1-0": as_reply(encode(msg)), b"2-0": as_reply(encode(delegate()))}
    redis = FakeRedis(
        xpending_range=pending_range(
            {b"w-dead": [held(b"1-0", b"w-dead", 9000)], b"w-live": [held(b"2-0", b"w-live", 10)]},
            idle=[],
        ),
        xclaim=claiming(entries),
        hmget=[None, None],
    )
    live_summary = summary((b"w-dead", 1), (b"w-live", 1))
    await reclaimer(redis, offline_settings).pool_entries("p1", {"w-live"}, live_summary)

    asked = [kw.get("consumername") for _, _, kw in redis.calls("xpending_range")]
    assert "w-live" not in asked  # a live consumer's entries are never looked at as lost
    assert claimed_ids(redis) == [b"1-0"]
    [(_, _, again)] = queued_retries(redis)
    assert again.history == ["attempt 1: worker w-dead died"]
    assert acked(redis) == [b"1-0"]


async def test_a_dead_consumer_with_nothing_pending_is_removed_from_the_group(
    offline_settings: Settings,
) -> None:
    redis = FakeRedis(xpending_range=pending_range({}, idle=[]))
    await reclaimer(redis, offline_settings).pool_entries("p1", set(), summary((b"w-gone", 1)))
    assert [args for _, args, _ in redis.calls("xgroup_delconsumer")] == [
        (STREAM, WORKER_GROUP, "w-gone")
    ]
    assert redis.calls("xclaim") == []


@pytest.mark.parametrize("empty", [None, {}, summary()])
async def test_a_stream_with_nothing_pending_costs_no_command(
    offline_settings: Settings, empty: dict[str, Any] | None
) -> None:
    redis = FakeRedis()
    await reclaimer(redis, offline_settings).pool_entries("p1", set(), empty)
    assert redis.log == []


async def test_an_entry_on_a_live_worker_is_overdue_only_at_its_timeout_plus_grace(
    offline_settings: Settings,
) -> None:
    grace = offline_settings.task_deadline_grace
    deadline_ms = int((10.0 + grace) * 1000)
    entries = {
        b"1-0": as_reply(encode(delegate(timeout=10.0))),
        b"2-0": as_reply(encode(delegate(timeout=10.0))),
    }
    idle = [held(b"1-0", b"w-live", deadline_ms), held(b"2-0", b"w-live", deadline_ms - 1)]
    redis = FakeRedis(
        xpending_range=pending_range({}, idle=idle),
        xrange=ranging(entries),
        xclaim=claiming(entries),
        hmget=[None, None],
    )
    await reclaimer(redis, offline_settings).pool_entries("p1", {"w-live"}, summary((b"w-live", 2)))

    [(_, _, idle_query)] = redis.calls("xpending_range")
    assert idle_query["idle"] == int(grace * 1000)  # younger entries are not even read
    assert claimed_ids(redis) == [b"1-0"]
    [(_, _, again)] = queued_retries(redis)
    assert again.history == ["attempt 1: attempt passed its deadline on w-live"]


async def test_an_entry_of_a_dead_worker_is_claimed_once_as_lost_with_it(
    offline_settings: Settings,
) -> None:
    entries = {b"1-0": as_reply(encode(delegate(timeout=1.0)))}
    old = held(b"1-0", b"w-dead", 10**9)  # also far past its deadline
    redis = FakeRedis(
        xpending_range=pending_range({b"w-dead": [old]}, idle=[old]),
        xrange=ranging(entries),
        xclaim=claiming(entries),
        hmget=[None, None],
    )
    await reclaimer(redis, offline_settings).pool_entries("p1", {"w-live"}, summary((b"w-dead", 1)))
    assert claimed_ids(redis) == [b"1-0"]
    [(_, _, again)] = queued_retries(redis)
    assert again.history == ["attempt 1: worker w-dead died"]


async def test_claims_wait_the_minimum_idle_time_so_racing_reclaimers_take_an_entry_once(
    offline_settings: Settings,
) -> None:
    redis = FakeRedis(
        xpending_range=pending_range({b"w-dead": [held(b"1-0", b"w-dead", 9000)]}, idle=[]),
        xclaim=[],  # another orchestrator claimed it first
    )
    await reclaimer(redis, offline_settings).pool_entries("p1", set(), summary((b"w-dead", 1)))
    [(_, args, kwargs)] = redis.calls("xclaim")
    assert args == (STREAM, WORKER_GROUP, OWNER)
    assert kwargs["min_idle_time"] == reclaim_module.RECLAIM_MIN_IDLE_MS > 0
    assert queued_retries(redis) == [] and acked(redis) == []  # what it did not get is not touched


async def test_a_lost_attempt_is_retried_as_the_next_attempt_on_its_pool_marked_retrying(
    offline_settings: Settings,
) -> None:
    msg = delegate(attempt=1)
    entries = {b"1-0": as_reply(encode(msg))}
    redis = FakeRedis(
        xpending_range=pending_range({b"w-dead": [held(b"1-0", b"w-dead", 9000)]}, idle=[]),
        xclaim=claiming(entries),
        hmget=[None, None],
    )
    await reclaimer(redis, offline_settings).pool_entries("p1", set(), summary((b"w-dead", 1)))

    [(pool_id, home, again)] = queued_retries(redis)
    assert (pool_id, home) == ("p1", "p1")
    assert again.task == msg.task and again.attempt == 2
    [(_, (keys, args), _)] = redis.calls("set_task_fields")
    assert keys == [offline_settings.keys.pool_task("p1", msg.task.id)]
    assert args == ["status", TaskStatus.RETRYING, "error", "worker w-dead died"]
    assert acked(redis) == [b"1-0"]


async def test_a_lost_last_attempt_is_dead_lettered_with_the_reason_instead_of_retried(
    offline_settings: Settings, finalized: list[list[FinalResult]]
) -> None:
    msg = delegate(attempt=3, max_attempts=3)
    entries = {b"1-0": as_reply(encode(msg))}
    redis = FakeRedis(
        xpending_range=pending_range({b"w-dead": [held(b"1-0", b"w-dead", 9000)]}, idle=[]),
        xclaim=claiming(entries),
        hmget=[None, None],
    )
    await reclaimer(redis, offline_settings).pool_entries("p1", set(), summary((b"w-dead", 1)))

    assert queued_retries(redis) == []
    [[final]] = finalized
    assert final.result.status is TaskStatus.DEAD_LETTERED
    assert final.result.error == dead_letter_reason(3, "worker w-dead died")
    assert final.home == "p1"
    assert acked(redis) == [b"1-0"]


@pytest.mark.parametrize(("announced_flag", "announce"), [(b"1", False), (b"0", True)])
async def test_a_taken_back_entry_whose_task_is_final_is_not_run_again(
    offline_settings: Settings,
    finalized: list[list[FinalResult]],
    announced: list[list[tuple[str, str]]],
    announced_flag: bytes,
    announce: bool,
) -> None:
    msg = delegate()
    entries = {b"1-0": as_reply(encode(msg))}
    redis = FakeRedis(
        xpending_range=pending_range({b"w-dead": [held(b"1-0", b"w-dead", 9000)]}, idle=[]),
        xclaim=claiming(entries),
        hmget=[b"completed", announced_flag],
    )
    await reclaimer(redis, offline_settings).pool_entries("p1", set(), summary((b"w-dead", 1)))

    assert queued_retries(redis) == [] and finalized == []
    assert acked(redis) == [b"1-0"]
    # a result recorded but never announced (its writer died in between) is announced now
    assert announced == ([[("p1", msg.task.id)]] if announce else [])


async def test_an_unreadable_taken_back_entry_is_dead_lettered_and_acknowledged(
    offline_settings: Settings,
) -> None:
    entries = {b"1-0": {b"type": b"NOT_A_TYPE", b"task": b"t-1"}}
    redis = FakeRedis(
        xpending_range=pending_range({b"w-dead": [held(b"1-0", b"w-dead", 9000)]}, idle=[]),
        xclaim=claiming(entries),
    )
    await reclaimer(redis, offline_settings).pool_entries("p1", set(), summary((b"w-dead", 1)))

    [(_, (stream, record), _)] = redis.calls("xadd")
    assert stream == offline_settings.keys.dlq
    assert record["reason"].startswith(f"malformed entry 1-0 on {STREAM}: unknown message type")
    assert record["task"] == "t-1" and record["pool"] == "p1"
    assert acked(redis) == [b"1-0"] and queued_retries(redis) == []


async def test_summaries_leave_out_pools_whose_xpending_failed(
    offline_settings: Settings,
) -> None:
    good = summary((b"w1", 1))
    keys = offline_settings.keys
    replies = {keys.pool_tasks("p1"): good, keys.pool_tasks("p2"): ResponseError("NOGROUP")}
    redis = FakeRedis(xpending=lambda stream, group: replies[stream])
    found = await reclaimer(redis, offline_settings).pending_summaries(["p1", "p2"])
    assert found == {"p1": good}


async def test_summaries_are_empty_when_redis_cannot_be_reached(
    offline_settings: Settings,
) -> None:
    redis = FakeRedis()
    redis.unreachable = RedisConnectionError("refused")
    assert await reclaimer(redis, offline_settings).pending_summaries(["p1"]) == {}


def retry_of(msg: TaskDelegate, pool_id: str, home: str) -> bytes:
    again = TaskDelegate(task=msg.task, attempt=msg.attempt + 1, history=["attempt 1: x"])
    return retry_member(pool_id, again, home=home)


async def test_retries_move_only_for_the_holder_of_the_scheduler_lease(
    offline_settings: Settings,
) -> None:
    redis = FakeRedis(acquire_lease=0, zrangebyscore=[retry_of(delegate(), "p1", "p1")])
    await reclaimer(redis, offline_settings).due_retries({"p1": PoolStatus.RUNNING})
    [(_, (keys, args), _)] = redis.calls("acquire_lease")
    assert keys == [offline_settings.keys.scheduler_lease] and args == [OWNER, 2000]
    assert redis.calls("zrangebyscore") == [] and redis.calls("xadd") == []


async def test_a_due_retry_of_a_routed_task_goes_back_to_the_ingress_as_pending(
    offline_settings: Settings,
) -> None:
    routed = TaskDelegate(task=TaskSpec(call="noop"), attempt=1)
    member = retry_of(routed, "", "p1")
    redis = FakeRedis(acquire_lease=1, zrangebyscore=[member])
    await reclaimer(redis, offline_settings).due_retries({})

    [(_, (stream, fields), _)] = redis.calls("xadd")
    assert stream == offline_settings.keys.ingress
    again = decode(as_reply(fields))
    assert isinstance(again, TaskDelegate) and again.attempt == 2
    [(_, (keys, args), _)] = redis.calls("set_task_fields")
    assert keys == [offline_settings.keys.pool_task("p1", routed.task.id)]  # its home's state
    assert args == ["status", TaskStatus.PENDING]
    assert [args for _, args, _ in redis.calls("zrem")] == [(offline_settings.keys.delayed, member)]


@pytest.mark.parametrize(
    "status", [PoolStatus.STARTING, PoolStatus.RUNNING, PoolStatus.DEGRADED, PoolStatus.SCALING]
)
async def test_a_due_retry_of_a_direct_task_goes_to_its_pool_while_it_takes_work(
    offline_settings: Settings, status: PoolStatus
) -> None:
    msg = delegate()
    redis = FakeRedis(acquire_lease=1, zrangebyscore=[retry_of(msg, "p1", "p1")])
    await reclaimer(redis, offline_settings).due_retries({"p1": status})

    assert [args[0] for _, args, _ in redis.calls("xadd")] == [STREAM]
    [(_, (_, args), _)] = redis.calls("set_task_fields")
    assert args == ["status", TaskStatus.QUEUED]


@pytest.mark.parametrize("status", [PoolStatus.CLOSING, PoolStatus.CLOSED, PoolStatus.FAILED, None])
async def test_a_due_retry_for_a_pool_that_takes_no_work_fails_with_the_reason(
    offline_settings: Settings, finalized: list[list[FinalResult]], status: PoolStatus | None
) -> None:
    msg = delegate()
    redis = FakeRedis(acquire_lease=1, zrangebyscore=[retry_of(msg, "p1", "p1")])
    pools = {"p1": status} if status else {}
    await reclaimer(redis, offline_settings).due_retries(pools)

    [[final]] = finalized
    assert final.result.task_id == msg.task.id and final.result.status is TaskStatus.FAILED
    assert final.result.error == "pool p1 is gone; the retry cannot run"
    assert final.home == "p1"
    assert redis.calls("xadd") == [] and len(redis.calls("zrem")) == 1


async def test_a_due_retry_stays_in_the_set_until_its_failure_is_written(
    offline_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> list[bool]:
        raise RedisConnectionError("lost")

    monkeypatch.setattr(records_module, "finalize_results", broken)
    redis = FakeRedis(acquire_lease=1, zrangebyscore=[retry_of(delegate(), "p1", "p1")])
    with pytest.raises(RedisConnectionError):
        await reclaimer(redis, offline_settings).due_retries({})
    assert redis.calls("zrem") == []  # still in the set: the next tick fails it again


async def test_an_unreadable_retry_member_is_dead_lettered_and_removed(
    offline_settings: Settings,
) -> None:
    redis = FakeRedis(acquire_lease=1, zrangebyscore=[b"\xc1 not msgpack"])
    await reclaimer(redis, offline_settings).due_retries({})

    [(_, (stream, record), _)] = redis.calls("xadd")
    assert stream == offline_settings.keys.dlq
    assert record["reason"] == f"unreadable retry entry in {offline_settings.keys.delayed}"
    assert len(redis.calls("zrem")) == 1


async def test_only_entries_of_orchestrators_whose_heartbeat_expired_are_taken_over(
    offline_settings: Settings,
) -> None:
    keys = offline_settings.keys
    entry = as_reply(encode(delegate()))
    ingress_summary = summary((OWNER.encode(), 1), (b"o-live", 1), (b"o-dead", 2))
    redis = FakeRedis(
        xpending=lambda stream, group: (
            ingress_summary if stream == keys.ingress else ResponseError("NOGROUP")
        ),
        exists=lambda key: int(key == keys.orchestrator("o-live")),
        xpending_range=pending_range(
            {b"o-dead": [held(b"1-0", b"o-dead", 9000), held(b"2-0", b"o-dead", 9000)]}, idle=[]
        ),
        xclaim=[(b"1-0", entry)],  # 2-0 was deleted meanwhile: Redis 7 leaves it out
    )
    taken = await reclaimer(redis, offline_settings).orphaned_entries()

    assert taken == {keys.ingress: [(b"1-0", entry)]}
    [(_, args, kwargs)] = redis.calls("xclaim")
    assert args == (keys.ingress, ORCHESTRATOR_GROUP, OWNER)
    assert kwargs["message_ids"] == [b"1-0", b"2-0"]
    looked_up = [args[0] for _, args, _ in redis.calls("exists")]
    assert looked_up == [keys.orchestrator("o-live"), keys.orchestrator("o-dead")]  # not its own


async def test_a_dead_orchestrator_with_nothing_pending_is_removed_from_the_group(
    offline_settings: Settings,
) -> None:
    keys = offline_settings.keys
    redis = FakeRedis(
        xpending=lambda stream, group: summary((b"o-dead", 1)) if stream == keys.control else None,
        exists=0,
        xpending_range=[],
    )
    assert await reclaimer(redis, offline_settings).orphaned_entries() == {}
    assert [args for _, args, _ in redis.calls("xgroup_delconsumer")] == [
        (keys.control, ORCHESTRATOR_GROUP, "o-dead")
    ]
    assert redis.calls("xclaim") == []
