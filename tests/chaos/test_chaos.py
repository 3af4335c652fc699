"""The chaos suite: each scenario submits known tasks, injects a fault, and proves that
submitted == completed + dead-lettered, nothing was lost, no result was recorded twice, and no
acknowledged entry was left in a stream."""

from __future__ import annotations

import os
import random
import signal
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.broker import EmbeddedBroker, start_redis_server
from shared.codec import ResultShare, TaskDelegate, decode
from shared.keys import WORKER_GROUP
from shared.models import TaskStatus
from tests.chaos.conftest import Chaos, _chaos, assert_nothing_lost
from tests.chaos.funcs import runs_key
from tests.conftest import make_settings, wait_until


async def test_kill_9_one_of_two_workers_while_it_holds_tasks(chaos: Chaos) -> None:
    chaos.start_orchestrator("o1")
    pool_id = await chaos.spawn("p", min_workers=2, concurrency=4)
    await chaos.submit(60, seconds=0.05, max_attempts=5)
    await chaos.running(at_least=4)
    victim = (await chaos.worker_pids())[0]
    os.kill(victim, signal.SIGKILL)
    chaos.figures.faults = "SIGKILL 1 of 2 workers"
    fig = await chaos.finish()
    assert_nothing_lost(fig)

    async def replaced() -> bool:
        return (await chaos.manager.get_pool(pool_id)).load.workers == 2

    await wait_until(replaced, what="a replacement worker")


async def test_kill_9_the_only_worker_and_a_new_one_takes_over(chaos: Chaos) -> None:
    chaos.start_orchestrator("o1")
    await chaos.spawn("p", min_workers=1, concurrency=8)
    await chaos.submit(40, seconds=0.1, max_attempts=5)
    await chaos.running(at_least=8)
    (victim,) = await chaos.worker_pids()
    os.kill(victim, signal.SIGKILL)
    chaos.figures.faults = "SIGKILL the only worker"
    fig = await chaos.finish()
    assert_nothing_lost(fig)
    assert fig.reruns >= 1  # what the dead worker held ran again, on its replacement


async def test_kill_9_a_worker_whose_last_acknowledgement_is_deferred(chaos: Chaos) -> None:
    """The worker's last flush announced its results and left their acknowledgement for a next
    flush that never comes (`tests/chaos/lingering_worker.py`): reclaim announces nothing twice
    and nothing runs again."""
    chaos.start_orchestrator("o1")
    pool_id = await chaos.spawn("p", min_workers=0, concurrency=8)
    victim = chaos.start_worker(pool_id, "lingering", module="tests.chaos.lingering_worker")

    async def joined() -> bool:
        return (await chaos.manager.get_pool(pool_id)).load.external_workers == 1

    await wait_until(joined, timeout=30, what="the lingering worker")
    probe = "c-probe"  # a reply stream nobody reads or trims: every reply stays countable
    ids = await chaos.submit(40, pool_id=pool_id, expect_reply=False, reply_to=probe)
    stream, replies = chaos.keys.pool_tasks(pool_id), chaos.keys.replies(probe)

    async def announced_not_acknowledged() -> bool:
        pending = (await chaos.redis.xpending(stream, WORKER_GROUP))["pending"]
        return pending > 0 and await chaos.redis.xlen(replies) == len(ids)

    await wait_until(announced_not_acknowledged, timeout=30, what="a deferred acknowledgement")
    held = await chaos.redis.xpending_range(stream, WORKER_GROUP, min="-", max="+", count=100)
    for entry in held:
        ((_, fields),) = await chaos.redis.xrange(stream, entry["message_id"], entry["message_id"])
        message = decode(fields)
        assert isinstance(message, TaskDelegate)
        state = chaos.keys.pool_task(pool_id, message.task.id)
        assert await chaos.redis.hget(state, "announced") == b"0"
    assert [k async for k in chaos.redis.scan_iter(match=f"{replies}:sent:*")]
    victim.send_signal(signal.SIGKILL)
    chaos.figures.faults = "SIGKILL the only worker, its last acknowledgement deferred"
    chaos.figures.notes.append(f"{len(held)} entr(ies) announced, not acknowledged, at the kill")
    fig = await chaos.finish()
    assert_nothing_lost(fig)
    assert fig.reruns == 0  # every task had its result: reclaim only acknowledged
    # `finish` counted the events before the repair (the results were in): count them after it
    told: Counter[str] = Counter()
    for _, fields in await chaos.redis.xrange(replies):
        message = decode(fields)
        assert isinstance(message, ResultShare)
        told[message.result.task_id] += 1
    assert told == dict.fromkeys(ids, 1)
    events = await chaos.redis.xrange(chaos.keys.events)
    completed = Counter(f[b"task"].decode() for _, f in events if f[b"type"] == b"TASK_COMPLETED")
    assert completed == dict.fromkeys(ids, 1)
    for task_id in ids:
        state = chaos.keys.pool_task(pool_id, task_id)
        assert await chaos.redis.hget(state, "announced") == b"1"


async def test_kill_9_an_orchestrator_mid_batch_while_another_runs(chaos: Chaos) -> None:
    doomed = chaos.start_orchestrator("o-doomed")
    chaos.start_orchestrator("o-survivor")
    await chaos.spawn("a", min_workers=1, concurrency=16)
    await chaos.spawn("b", min_workers=1, concurrency=16)
    for _ in range(5):
        await chaos.submit(60)
    doomed.send_signal(signal.SIGKILL)
    for _ in range(5):
        await chaos.submit(60)
    chaos.figures.faults = "SIGKILL 1 of 2 orchestrators"
    fig = await chaos.finish()
    assert_nothing_lost(fig)


async def test_restart_redis_with_aof_in_the_middle_of_a_run(
    own_redis: EmbeddedBroker, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(
        prefix, tmp_path, redis_url=own_redis.url, events_max_len=100_000, task_deadline_grace=1.0
    )
    async for chaos in _chaos(settings, tmp_path, "restart_redis_with_aof_mid_run", monkeypatch):
        chaos.start_orchestrator("o1")
        await chaos.spawn("p", min_workers=2, concurrency=8)
        await chaos.submit(200, seconds=0.02, max_attempts=5)
        await chaos.running(at_least=10)
        port, data_dir = own_redis.port, own_redis.data_dir
        await own_redis.stop()
        restarted = await start_redis_server(port, data_dir, appendonly=True)
        chaos.figures.faults = "Redis SIGTERM + restart (AOF)"
        try:
            await chaos.submit(100, seconds=0.01, max_attempts=5)
            fig = await chaos.finish(timeout=60)
            assert_nothing_lost(fig)
        finally:
            await chaos.close()
            await restarted.stop()


async def test_a_task_that_always_fails_is_dead_lettered_and_the_caller_told(chaos: Chaos) -> None:
    chaos.start_orchestrator("o1")
    await chaos.spawn("p", min_workers=1)
    await chaos.submit(20)
    doomed = await chaos.manager.submit({"call": "explode", "args": ["x"], "max_attempts": 3})
    chaos.ids.append(doomed)
    chaos.figures.tasks += 1
    chaos.figures.faults = "1 task always raises"
    fig = await chaos.finish()
    assert_nothing_lost(fig, dead_lettered=1)
    final = await chaos.manager.result(doomed, timeout=1)
    assert final.status is TaskStatus.DEAD_LETTERED and final.attempts == 3
    entries = await chaos.redis.xrange(chaos.keys.dlq)
    assert len(entries) == 1 and b"fails on purpose" in entries[0][1][b"history"]


async def test_a_task_longer_than_any_reclaim_threshold_runs_exactly_once(chaos: Chaos) -> None:
    chaos.start_orchestrator("o1")
    await chaos.spawn("p", min_workers=1)
    ttl = chaos.settings.heartbeat_ttl
    grace = chaos.settings.task_deadline_grace
    (task_id,) = await chaos.submit(1, seconds=2 * ttl + grace, timeout=60)
    chaos.figures.faults = (
        f"task of {2 * ttl + grace:g}s > heartbeat TTL {ttl:g}s and grace {grace:g}s"
    )
    fig = await chaos.finish()
    assert_nothing_lost(fig)
    assert fig.reruns == 0
    assert int(await chaos.redis.hget(runs_key(), chaos.tokens[task_id]) or 0) == 1
    assert (await chaos.manager.result(task_id, timeout=1)).attempts == 1


async def test_sigterm_drain_during_a_run(chaos: Chaos) -> None:
    chaos.start_orchestrator("o1")
    await chaos.spawn("p", min_workers=2, concurrency=4)
    await chaos.submit(60, seconds=0.05)
    await chaos.running(at_least=4)
    victim = (await chaos.worker_pids())[0]
    os.kill(victim, signal.SIGTERM)
    chaos.figures.faults = "SIGTERM 1 of 2 workers"
    fig = await chaos.finish()
    assert_nothing_lost(fig)
    assert fig.reruns == 0  # a drain finishes what it holds: nothing runs twice


async def test_random_bytes_in_pool_ingress_and_control_streams(chaos: Chaos) -> None:
    chaos.start_orchestrator("o1")
    pool_id = await chaos.spawn("p", min_workers=1, concurrency=8)
    rng = random.Random(1234)
    consumed = [
        chaos.keys.pool_tasks(pool_id),
        chaos.keys.pool_inbox(pool_id),
        chaos.keys.ingress,
        chaos.keys.control,
    ]
    targets = [*consumed, chaos.keys.events, chaos.keys.replies(chaos.manager.client_id)]
    injected = 0
    for _ in range(5):
        await chaos.submit(20)
        for stream in targets:
            for _ in range(6):
                fields = {
                    rng.choice([b"type", b"body", bytes(rng.randbytes(4))]): rng.randbytes(
                        rng.randint(0, 64)
                    )
                    for _ in range(rng.randint(1, 3))
                }
                if rng.random() < 0.5:
                    fields[b"type"] = rng.choice([b"TASK_DELEGATE", b"CONTROL", b"RESULT_SHARE"])
                await chaos.redis.xadd(stream, fields)
                injected += stream in consumed
    chaos.figures.faults = f"random entries in {len(targets)} streams"
    fig = await chaos.finish()
    assert_nothing_lost(fig)
    # every entry injected into a group-consumed stream is dead-lettered with its reason
    dead = await chaos.redis.xlen(chaos.keys.dlq)
    assert dead == injected
    assert (await chaos.manager.execute_on_pool(pool_id, {"prompt": "alive"}, timeout=10)).ok
