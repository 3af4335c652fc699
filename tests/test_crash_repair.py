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
        await finals_module._record(client, scripts, settings, [first])  # then it died
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


@pytest.mark.unit
def test_a_script_call_with_keys_of_two_slots_is_refused() -> None:
    check_one_slot("forward", ["mhv:pool:{a}", "mhv:pool:{a}:tasks", "mhv:pool:{a}:task:t"])
    check_one_slot("init_batch", ["mhv:{ingress}:task:t1", "mhv:{ingress}:task:t2"])
    with pytest.raises(CrossSlotCall, match="two slots"):
        check_one_slot("forward", ["mhv:pool:{a}", "mhv:pool:{b}:tasks"])
    with pytest.raises(CrossSlotCall):
        check_one_slot("start_batch", ["mhv:worker:w1", "mhv:worker:w2"])
