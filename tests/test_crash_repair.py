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
from shared.finals import FinalResult, finalize_results
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


@pytest.mark.unit
def test_a_script_call_with_keys_of_two_slots_is_refused() -> None:
    check_one_slot("forward", ["mhv:pool:{a}", "mhv:pool:{a}:tasks", "mhv:pool:{a}:task:t"])
    check_one_slot("init_batch", ["mhv:{ingress}:task:t1", "mhv:{ingress}:task:t2"])
    with pytest.raises(CrossSlotCall, match="two slots"):
        check_one_slot("forward", ["mhv:pool:{a}", "mhv:pool:{b}:tasks"])
    with pytest.raises(CrossSlotCall):
        check_one_slot("start_batch", ["mhv:worker:w1", "mhv:worker:w2"])
