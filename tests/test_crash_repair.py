"""A writer that dies between recording a result and announcing it (the steps of
shared/finals.py) leaves nothing final but unannounced: whoever handles the entry next announces
the stored result, and a retried announcement adds no entry twice. On the standalone server and
on the cluster."""

from __future__ import annotations

import time
from typing import Any

import pytest

from shared import finals as finals_module
from shared.codec import ResultShare, decode
from shared.config import Settings
from shared.connection import connect
from shared.finals import (
    SENT_MARKER_GRACE,
    FinalResult,
    PendingAck,
    acknowledge_pending,
    finalize_deferring_ack,
    finalize_results,
)
from shared.keys import WORKER_GROUP
from shared.models import TaskResult, TaskStatus, new_id
from shared.scripts import START_ANNOUNCE, CrossSlotCall, Scripts, check_one_slot

POOL = "p-repair"


def _final(token: str, task_id: str, output: str = "out") -> FinalResult:
    result = TaskResult(
        task_id=task_id,
        pool_id=POOL,
        worker_id="w-1",
        status=TaskStatus.COMPLETED,
        output=output,
        attempts=1,
        finished_at=time.time(),
    )
    return FinalResult(result, "c-1", "echo()", token=token)


async def _replies(redis: Any, settings: Settings) -> list[ResultShare]:
    out = []
    for _, fields in await redis.xrange(settings.keys.replies("c-1")):
        message = decode(fields)
        assert isinstance(message, ResultShare)
        out.append(message)
    return out


async def test_a_result_recorded_but_never_announced_is_announced_by_the_next_writer(
    settings: Settings, redis: Any
) -> None:
    client = connect(settings, retries=0)
    scripts = Scripts(client)
    task_id = new_id("t")
    try:
        first = _final("w-1/1-0", task_id, output="first")
        await finals_module._record(client, scripts, settings, [first], "b-1")  # then it died
        assert await _replies(redis, settings) == []
        # the next attempt's worker reads the entry again: START says announce what is stored
        state = settings.keys.pool_task(POOL, task_id)
        verdicts = await scripts.start_batch(keys=[state], args=["w-2", "1.0", 2])
        assert verdicts == [START_ANNOUNCE]
        # a second writer (reclaim, another attempt) finds it final: the stored result goes out
        second = _final("w-2/2-0", task_id, output="second")
        written = await finalize_results(client, scripts, settings, [second])
        assert written == [False]
        replies = await _replies(redis, settings)
        assert [r.result.output for r in replies] == ["first"]
        assert (await redis.hget(state, "announced")) == b"1"
        # from now on nobody announces it again
        await finalize_results(client, scripts, settings, [second])
        assert len(await _replies(redis, settings)) == 1
    finally:
        await client.aclose()


async def test_an_announcement_retried_after_a_lost_reply_adds_nothing_twice(
    settings: Settings, redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = connect(settings, retries=0)
    scripts = Scripts(client)
    batch = [_final(f"w-1/{n}-0", new_id("t")) for n in range(3)]
    calls = 0
    real = finals_module.acknowledge

    async def lost_reply(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:  # steps 1 and 2 went through; the writer never heard back
            raise ConnectionError("connection lost")
        await real(*args, **kwargs)

    monkeypatch.setattr(finals_module, "acknowledge", lost_reply)
    try:
        with pytest.raises(ConnectionError):
            await finalize_results(client, scripts, settings, batch)
        written = await finalize_results(client, scripts, settings, batch)
    finally:
        await client.aclose()
    assert written == [True, True, True]  # the same writer: its results, announced once
    assert len(await _replies(redis, settings)) == 3
    completions = [f for _, f in await redis.xrange(settings.keys.events)]
    assert len(completions) == 3


def _died_after_announcing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next `finalize_results` dies after step 2 (its announcements were added) and before
    step 3 (`announced` is never set, the sent markers stay)."""
    real = finals_module.acknowledge
    calls = 0

    async def died(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("killed before acknowledging")
        await real(*args, **kwargs)

    monkeypatch.setattr(finals_module, "acknowledge", died)


def _dead(token: str, task_id: str) -> FinalResult:
    final = _final(token, task_id)
    final.result.status = TaskStatus.DEAD_LETTERED
    final.result.error = "gave up"
    return final


async def _counts(redis: Any, settings: Settings) -> tuple[int, int, int]:
    keys = settings.keys
    return (
        len(await redis.xrange(keys.replies("c-1"))),
        len(await redis.xrange(keys.events)),
        len(await redis.xrange(keys.dlq)),
    )


async def test_results_announced_by_a_writer_that_died_are_not_announced_again_by_its_repairers(
    settings: Settings, redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = connect(settings, retries=0)
    scripts = Scripts(client)
    ids = [new_id("t") for _ in range(4)]
    batch = [_final(f"w-1/{n}-0", t) for n, t in enumerate(ids[:3])] + [_dead("w-1/3-0", ids[3])]
    _died_after_announcing(monkeypatch)
    try:
        with pytest.raises(ConnectionError):
            await finalize_results(client, scripts, settings, batch)
        assert await _counts(redis, settings) == (4, 4, 1)
        # two repairers, each finding part of the dead writer's batch (a worker reading the
        # entry again, reclaim), and a later writer of one of the tasks
        await finals_module.announce_stored(client, scripts, settings, [(POOL, ids[0])])
        await finals_module.announce_stored(client, scripts, settings, [(POOL, t) for t in ids[1:]])
        written = await finalize_results(client, scripts, settings, [_final("w-2/1-0", ids[0])])
        assert written == [False]
        assert await _counts(redis, settings) == (4, 4, 1)
        for task_id in ids:
            state = settings.keys.pool_task(POOL, task_id)
            assert await redis.hget(state, "announced") == b"1"
    finally:
        await client.aclose()


async def test_a_repairer_adds_what_a_dead_writer_did_not_reach(
    settings: Settings, redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 2's streams can live on different nodes of a cluster: a writer can die having
    added its replies but not its events. The repair adds just the events."""
    client = connect(settings, retries=0)
    scripts = Scripts(client)
    ids = [new_id("t") for _ in range(3)]
    _died_after_announcing(monkeypatch)
    try:
        with pytest.raises(ConnectionError):
            await finalize_results(
                client, scripts, settings, [_final(f"w-1/{n}", t) for n, t in enumerate(ids)]
            )
        events = settings.keys.events
        markers = [k async for k in redis.scan_iter(match=f"{events}:sent:*")]
        assert len(markers) == 1
        await redis.delete(events, *markers)  # as if that XADD_MANY never ran
        await finals_module.announce_stored(client, scripts, settings, [(POOL, t) for t in ids])
        assert await _counts(redis, settings) == (3, 3, 0)
    finally:
        await client.aclose()


async def _taken(redis: Any, settings: Settings, count: int) -> list[bytes]:
    """`count` entries added to the pool's stream and read by consumer w-1, as a worker holds
    them; their ids."""
    stream = settings.keys.pool_tasks(POOL)
    await redis.xgroup_create(stream, WORKER_GROUP, id="0", mkstream=True)
    for n in range(count):
        await redis.xadd(stream, {"n": str(n)})
    read = await redis.xreadgroup(WORKER_GROUP, "w-1", {stream: ">"}, count=count)
    entries = read[stream.encode()] if isinstance(read, dict) else read[0][1]
    return [entry_id for entry_id, _ in entries]


async def _state(redis: Any, settings: Settings) -> tuple[int, int, int, set[bytes | None]]:
    """(entries pending, entries in the stream, sent markers not yet on their short grace after
    step 3, `announced` of the results)."""
    stream = settings.keys.pool_tasks(POOL)
    pending = (await redis.xpending(stream, WORKER_GROUP))["pending"]
    markers = [
        k
        async for k in redis.scan_iter(match=f"{settings.key_prefix}*:sent:*")
        if await redis.ttl(k) > SENT_MARKER_GRACE
    ]
    announced = set()
    async for key in redis.scan_iter(match=f"{settings.keys.pool_task(POOL, '')}*"):
        announced.add(await redis.hget(key, "announced"))
    return pending, await redis.xlen(stream), len(markers), announced


async def test_a_deferred_acknowledgement_rides_with_the_next_call(
    settings: Settings, redis: Any
) -> None:
    client = connect(settings, retries=0)
    scripts = Scripts(client)
    stream = settings.keys.pool_tasks(POOL)
    ids = await _taken(redis, settings, 4)
    first = [_final(f"w-1/{n}", new_id("t")) for n in range(2)]
    second = [_final(f"w-1/{n}", new_id("t")) for n in range(2, 4)]
    try:
        written, pending = await finalize_deferring_ack(
            client, scripts, settings, first, previous=None, ack=(stream, WORKER_GROUP, ids[:2])
        )
        assert written == [True, True] and pending is not None
        assert list(pending.entry_ids) == ids[:2]
        # announced, not yet acknowledged: what a writer dying after step 2 leaves
        assert len(await _replies(redis, settings)) == 2
        assert await _state(redis, settings) == (4, 4, 2, {b"0"})
        written, carried = await finalize_deferring_ack(
            client, scripts, settings, second, previous=pending, ack=(stream, WORKER_GROUP, ids[2:])
        )
        assert written == [True, True] and carried is not None
        # the first call's step 3 went with the second's: its entries are gone, its markers
        # on their grace
        pending_now, length, markers, _ = await _state(redis, settings)
        assert (pending_now, length, markers) == (2, 2, 2)
        for final in first:
            state = settings.keys.pool_task(POOL, final.result.task_id)
            assert await redis.hget(state, "announced") == b"1"
        await acknowledge_pending(client, scripts, settings, carried)
        assert await _state(redis, settings) == (0, 0, 0, {b"1"})
        assert await _counts(redis, settings) == (4, 4, 0)
    finally:
        await client.aclose()


async def test_a_writer_that_dies_with_its_acknowledgement_deferred_is_repaired_once(
    settings: Settings, redis: Any
) -> None:
    """Its results are announced and its entries pending: the next reader of an entry and
    reclaim announce the stored results, adding nothing the dead writer added."""
    client = connect(settings, retries=0)
    scripts = Scripts(client)
    stream = settings.keys.pool_tasks(POOL)
    ids = await _taken(redis, settings, 3)
    tasks = [new_id("t") for _ in range(3)]
    batch = [_final(f"w-1/{n}", t) for n, t in enumerate(tasks[:2])] + [_dead("w-1/2", tasks[2])]
    try:
        _, pending = await finalize_deferring_ack(
            client, scripts, settings, batch, previous=None, ack=(stream, WORKER_GROUP, ids)
        )
        assert pending is not None  # ... and then the writer died
        assert await _counts(redis, settings) == (3, 3, 1)
        state = settings.keys.pool_task(POOL, tasks[0])
        assert await scripts.start_batch(keys=[state], args=["w-2", "1.0", 2]) == [START_ANNOUNCE]
        # a worker reading an entry again, and reclaim taking back the rest with their acks
        await finals_module.announce_stored(client, scripts, settings, [(POOL, tasks[0])])
        await finals_module.announce_stored(
            client,
            scripts,
            settings,
            [(POOL, t) for t in tasks[1:]],
            ack=(stream, WORKER_GROUP, ids),
        )
        assert await _counts(redis, settings) == (3, 3, 1)
        pending_now, length, _, announced = await _state(redis, settings)
        assert (pending_now, length, announced) == (0, 0, {b"1"})
    finally:
        await client.aclose()


async def test_a_repairer_that_finds_the_result_announced_meanwhile_adds_nothing(
    settings: Settings, redis: Any
) -> None:
    """A task's entry read again while its writer's acknowledgement was deferred gets
    START_ANNOUNCE; if that acknowledgement (and the markers' deletion) lands before the repair,
    the repair finds `announced` 1 and announces nothing."""
    client = connect(settings, retries=0)
    scripts = Scripts(client)
    task_id = new_id("t")
    try:
        _, pending = await finalize_deferring_ack(
            client, scripts, settings, [_final("w-1/1", task_id)], previous=None
        )
        assert pending is not None
        state = settings.keys.pool_task(POOL, task_id)
        assert await scripts.start_batch(keys=[state], args=["w-1", "1.0", 1]) == [START_ANNOUNCE]
        await acknowledge_pending(client, scripts, settings, pending)
        await finals_module.announce_stored(client, scripts, settings, [(POOL, task_id)])
        assert await _counts(redis, settings) == (1, 1, 0)
    finally:
        await client.aclose()


async def test_what_a_repair_cannot_tell_apart_is_acknowledged_at_once(
    settings: Settings, redis: Any
) -> None:
    """Retries and other `extra` commands have no sent markers, and a stored result names its
    own writer's: a call with either acknowledges at once rather than defer."""
    client = connect(settings, retries=0)
    scripts = Scripts(client)
    stream = settings.keys.pool_tasks(POOL)
    ids = await _taken(redis, settings, 2)
    stored = new_id("t")
    try:
        await finals_module._record(client, scripts, settings, [_final("w-0/9", stored)], "b-0")
        _, pending = await finalize_deferring_ack(
            client,
            scripts,
            settings,
            [],
            previous=None,
            ack=(stream, WORKER_GROUP, ids[:1]),
            stored=[(POOL, stored)],
        )
        assert pending is None
        _, pending = await finalize_deferring_ack(
            client,
            scripts,
            settings,
            [_final("w-1/1", new_id("t"))],
            previous=None,
            ack=(stream, WORKER_GROUP, ids[1:]),
            extra=lambda pipe: pipe.set(f"{settings.key_prefix}extra", "1"),
        )
        assert pending is None
        assert await _state(redis, settings) == (0, 0, 0, {b"1"})
        assert await _counts(redis, settings) == (2, 2, 0)
    finally:
        await client.aclose()


@pytest.mark.unit
def test_a_pending_acknowledgement_names_its_entries() -> None:
    pending = PendingAck((("p", "t1"),), ("s", "g", [b"1-0", b"2-0"]), ("m",))
    assert list(pending.entry_ids) == [b"1-0", b"2-0"]
    assert list(PendingAck((), None, ()).entry_ids) == []


@pytest.mark.unit
def test_a_script_call_with_keys_of_two_slots_is_refused() -> None:
    check_one_slot("forward", ["mhv:pool:{a}", "mhv:pool:{a}:tasks", "mhv:pool:{a}:task:t"])
    check_one_slot("init_batch", ["mhv:{ingress}:task:t1", "mhv:{ingress}:task:t2"])
    with pytest.raises(CrossSlotCall, match="two slots"):
        check_one_slot("forward", ["mhv:pool:{a}", "mhv:pool:{b}:tasks"])
    with pytest.raises(CrossSlotCall):
        check_one_slot("start_batch", ["mhv:worker:w1", "mhv:worker:w2"])
