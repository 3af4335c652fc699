"""End to end on a real Redis: an in-process orchestrator, pools of real worker processes."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared import client as client_module
from shared.client import PoolManager
from shared.config import Settings
from shared.errors import (
    IdempotencyConflict,
    InboxFull,
    InvalidRequest,
    OrchestratorUnavailable,
    PoolNotFound,
    PoolUnavailable,
    QueueFull,
)
from shared.keys import WORKER_GROUP
from shared.models import PoolStatus, TaskResult, TaskStatus
from tests.conftest import wait_until


async def is_running(manager: PoolManager, task_id: str) -> bool:
    return (await manager.status(task_id)).status is TaskStatus.RUNNING


async def test_a_prompt_runs_on_a_pool_and_the_result_keeps_the_originals_keys(
    orchestrator: Any, manager: PoolManager
) -> None:
    pool_id = await manager.spawn_pool("mahavishnu", name="p1", min_workers=1)
    result = await manager.execute_on_pool(pool_id, {"prompt": "hello"}, timeout=15)
    assert result.status is TaskStatus.COMPLETED
    assert result.output == "hello"
    assert result.pool_id == pool_id and result.worker_id and result.attempts == 1
    dumped = result.model_dump()
    for key in (
        "pool_id",
        "worker_id",
        "status",
        "output",
        "error",
        "duration",
        "task_id",
        "exit_code",
    ):
        assert key in dumped
    routed = await manager.route_task({"call": "add", "args": [2, 3]}, timeout=15)
    assert routed.output == 5 and routed.pool_id == pool_id


async def test_results_are_recorded_and_streams_are_left_empty(
    orchestrator: Any, manager: PoolManager, redis: aioredis.Redis, settings: Settings
) -> None:
    pool_id = await manager.spawn_pool("local", name="p1", min_workers=2)
    results = await manager.execute_batch(
        [{"call": "add", "args": [i, i]} for i in range(300)], timeout=60
    )
    assert [r.output for r in results] == [2 * i for i in range(300)]

    async def acknowledged() -> bool:  # a reply is sent before its entry is acknowledged
        return await redis.xlen(settings.keys.pool_tasks(pool_id)) == 0

    await wait_until(acknowledged, what="the workers to acknowledge the entries they ran")
    assert await redis.xlen(settings.keys.ingress) == 0
    status = await manager.status(results[0].task_id)
    assert status.status is TaskStatus.COMPLETED and status.output == 0
    memory = await redis.xrevrange(settings.keys.pool_memory(pool_id), count=1)
    assert memory and memory[0][1][b"status"] == b"completed"
    replies = settings.keys.replies(manager.client_id)

    async def replies_trimmed() -> bool:
        return await redis.xlen(replies) == 0

    await wait_until(replies_trimmed, what="the client to trim the replies it read")


async def two_pools(manager: PoolManager, **spec: Any) -> tuple[str, str]:
    a, b = await asyncio.gather(
        manager.spawn_pool(
            "local", name="a", min_workers=2, concurrency=2, labels={"repo": "api"}, **spec
        ),
        manager.spawn_pool(
            "local", name="b", min_workers=2, concurrency=2, labels={"repo": "web"}, **spec
        ),
    )
    return a, b


async def test_least_loaded_sends_fewer_tasks_to_a_busy_pool(
    orchestrator: Any, manager: PoolManager
) -> None:
    busy, idle = await two_pools(manager)
    # 16 entries in the busy pool's stream: the idle pool's backlog (XLEN) also counts the last
    # batch each of its workers acknowledges with its next flush (`worker.ACK_LINGER`), up to
    # its concurrency, so a busy pool must stand out by more than that
    blockers = await manager.submit_many([{"call": "sleep", "args": [2]}] * 16, pool_id=busy)
    results = await manager.execute_batch(
        [{"call": "noop", "strategy": "least_loaded"} for _ in range(20)], timeout=30
    )
    picks = Counter(r.pool_id for r in results)
    assert picks[idle] > picks[busy]
    for task_id in blockers:
        await manager.cancel(task_id)


async def test_affinity_sticks_and_moves_only_when_its_pool_closes(
    orchestrator: Any, manager: PoolManager
) -> None:
    a, b = await two_pools(manager)
    first = [
        await manager.route_task({"call": "noop", "affinity_key": "user-7"}, timeout=15)
        for _ in range(6)
    ]
    owner = first[0].pool_id
    assert {r.pool_id for r in first} == {owner}
    await manager.close_pool(owner or "", timeout=30)
    other = b if owner == a else a
    moved = await manager.route_task(
        {"call": "noop", "affinity_key": "user-7"}, "affinity", timeout=15
    )
    assert moved.pool_id == other


async def test_a_label_requirement_is_honoured(orchestrator: Any, manager: PoolManager) -> None:
    api, _web = await two_pools(manager)
    results = await manager.execute_batch(
        [{"call": "noop", "labels": {"repo": "api"}, "strategy": "round_robin"} for _ in range(10)],
        timeout=30,
    )
    assert {r.pool_id for r in results} == {api}
    nowhere = await manager.route_task(
        {"call": "noop", "labels": {"repo": "ios"}, "queue_timeout": 0.5}, timeout=15
    )
    assert nowhere.status is TaskStatus.FAILED
    assert "no eligible pool" in (nowhere.error or "") and "lacks label repo=ios" in (
        nowhere.error or ""
    )


async def test_round_robin_alternates(orchestrator: Any, manager: PoolManager) -> None:
    a, b = await two_pools(manager)
    picks = [
        (await manager.route_task({"call": "noop"}, "round_robin", timeout=15)).pool_id
        for _ in range(6)
    ]
    assert Counter(picks) == {a: 3, b: 3}


async def test_a_worker_never_holds_more_entries_than_its_concurrency(
    orchestrator: Any, manager: PoolManager, redis: aioredis.Redis, settings: Settings
) -> None:
    """It reads no more than it can start. Besides the tasks it runs, it holds at most the
    batch it flushed last, announced and waiting for its acknowledgement to ride with the next
    flush (`worker/worker.py` `ACK_LINGER`)."""
    pool_id = await manager.spawn_pool("local", name="narrow", min_workers=1, concurrency=2)
    ids = await manager.submit_many([{"call": "sleep", "args": [0.2]}] * 8, pool_id=pool_id)
    stream = settings.keys.pool_tasks(pool_id)
    tasks = {entry_id: fields[b"task"] for entry_id, fields in await redis.xrange(stream)}
    waiting = asyncio.ensure_future(asyncio.gather(*(manager.result(i, 30) for i in ids)))
    most = most_unfinished = 0
    while not waiting.done():
        held = await redis.xpending_range(stream, WORKER_GROUP, min="-", max="+", count=100)
        pipe = redis.pipeline(transaction=False)
        for entry in held:
            pipe.hget(
                settings.keys.pool_task(pool_id, tasks[entry["message_id"]].decode()), "status"
            )
        statuses = await pipe.execute() if held else []
        unfinished = sum(not TaskStatus(s.decode()).is_final for s in statuses if s)
        most, most_unfinished = max(most, len(held)), max(most_unfinished, unfinished)
        await asyncio.wait([waiting], timeout=0.02)
    assert all(r.ok for r in waiting.result())
    assert 1 <= most_unfinished <= 2
    assert most <= 4


async def test_a_bounded_ingress_gives_a_clear_queue_full(settings: Settings) -> None:
    bounded = settings.model_copy(update={"ingress_max_len": 3})
    async with PoolManager(bounded) as pm:
        await pm.submit_many([{"call": "noop"}] * 3, expect_reply=False)
        with pytest.raises(QueueFull, match="queue full: the ingress stream is at its limit"):
            await pm.submit({"call": "noop"})


@pytest.mark.parametrize("chunk", [1000, 2], ids=["one-call", "calls-of-2"])
async def test_a_batch_that_does_not_fit_a_pool_queues_nothing(
    orchestrator: Any,
    manager: PoolManager,
    redis: aioredis.Redis,
    settings: Settings,
    chunk: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_module, "SUBMIT_CHUNK", chunk)
    pool_id = await manager.spawn_pool("local", name="p", min_workers=0, max_queue=7)
    await manager.submit_many([{"call": "noop"}] * 2, pool_id=pool_id, expect_reply=False)
    with pytest.raises(QueueFull, match=r"at its limit \(6 of 6 tasks not queued\)"):
        await manager.submit_many([{"call": "noop"}] * 6, pool_id=pool_id)
    assert await redis.xlen(settings.keys.pool_tasks(pool_id)) == 2
    await manager.submit_many([{"call": "noop"}] * 5, pool_id=pool_id, expect_reply=False)
    assert await redis.xlen(settings.keys.pool_tasks(pool_id)) == 7


async def test_a_malformed_entry_is_dead_lettered_and_the_worker_keeps_serving(
    orchestrator: Any, manager: PoolManager, redis: aioredis.Redis, settings: Settings
) -> None:
    pool_id = await manager.spawn_pool("local", name="p", min_workers=1)
    stream = settings.keys.pool_tasks(pool_id)
    await redis.xadd(stream, {"type": "TASK_DELEGATE", "body": b"\xc1garbage"})
    await redis.xadd(stream, {"hello": "world"})
    ok = await manager.execute_on_pool(pool_id, {"prompt": "still alive"}, timeout=15)
    assert ok.output == "still alive"
    dead = await redis.xrange(settings.keys.dlq)
    reasons = [entry[b"reason"].decode() for _, entry in dead]
    assert any("not valid msgpack" in r for r in reasons)
    assert any("no 'type' field" in r for r in reasons)

    async def acknowledged() -> bool:  # a reply is sent before its entry is acknowledged
        return await redis.xlen(stream) == 0

    await wait_until(acknowledged, what="the worker to acknowledge the entries")


async def test_a_failing_task_retries_then_is_dead_lettered(
    orchestrator: Any, manager: PoolManager, redis: aioredis.Redis, settings: Settings
) -> None:
    pool_id = await manager.spawn_pool("local", name="p", min_workers=1)
    result = await manager.execute_on_pool(pool_id, {"call": "fail", "max_attempts": 3}, timeout=30)
    assert result.status is TaskStatus.DEAD_LETTERED
    assert result.attempts == 3
    assert "dead-lettered after 3 attempt(s)" in (result.error or "")
    dead = await redis.xrange(settings.keys.dlq)
    assert [e[b"task"].decode() for _, e in dead] == [result.task_id]


async def test_cancel_a_queued_and_a_running_task(orchestrator: Any, manager: PoolManager) -> None:
    pool_id = await manager.spawn_pool("local", name="p", min_workers=1, concurrency=1)
    running = await manager.submit({"call": "sleep", "args": [30]}, pool_id=pool_id)
    queued = await manager.submit({"call": "noop"}, pool_id=pool_id)
    assert await manager.cancel(queued) is TaskStatus.QUEUED
    await wait_until(lambda: is_running(manager, running), what="the task to start")
    assert await manager.cancel(running) is TaskStatus.RUNNING
    stopped = await manager.result(running, timeout=15)
    assert stopped.status is TaskStatus.CANCELLED
    never = await manager.result(queued, timeout=5)
    assert never.status is TaskStatus.CANCELLED and never.error == "cancelled before it started"
    after = await manager.execute_on_pool(pool_id, {"call": "noop"}, timeout=15)
    assert after.ok


async def test_an_idempotency_key_returns_the_first_task(
    orchestrator: Any, manager: PoolManager
) -> None:
    pool_id = await manager.spawn_pool("local", name="p", min_workers=1)
    first = await manager.submit(
        {"call": "add", "args": [1, 1], "idempotency_key": "job-42"}, pool_id=pool_id
    )
    again = await manager.submit(
        {"call": "add", "args": [1, 1], "timeout": 9, "idempotency_key": "job-42"},
        pool_id=pool_id,
    )
    assert again == first
    with pytest.raises(IdempotencyConflict, match=first):
        await manager.submit(
            {"call": "add", "args": [9, 9], "idempotency_key": "job-42"}, pool_id=pool_id
        )
    assert (await manager.result(first, timeout=15)).output == 2


async def test_spawn_errors_are_clear(orchestrator: Any, manager: PoolManager) -> None:
    with pytest.raises(
        InvalidRequest, match=r"min_workers \(5\) must not exceed max_workers \(2\)"
    ):
        await manager.spawn_pool("local", name="bad", min_workers=5, max_workers=2)
    with pytest.raises(PoolUnavailable, match="claude"):
        await manager.spawn_pool(
            "local",
            name="ai",
            worker_type="terminal-claude",
            command_template=["no-such-claude-cli", "-p", "{prompt}"],
        )
    with pytest.raises(PoolNotFound):
        await manager.execute_on_pool("p-missing", {"prompt": "x"})


async def test_spawn_without_an_orchestrator_says_so(manager: PoolManager) -> None:
    with pytest.raises(OrchestratorUnavailable, match="is `mahavishnu orchestrator`"):
        await manager.spawn_pool("local", name="lonely", timeout=0.5)


async def test_closing_a_pool_fails_its_direct_tasks_and_refuses_new_ones(
    orchestrator: Any, manager: PoolManager
) -> None:
    pool_id = await manager.spawn_pool("local", name="p", min_workers=1, concurrency=1)
    blocker = await manager.submit({"call": "sleep", "args": [0.3]}, pool_id=pool_id)
    queued = await manager.submit_many([{"call": "noop"}] * 3, pool_id=pool_id)
    await manager.close_pool(pool_id, timeout=30)
    results = [await manager.result(i, timeout=15) for i in [blocker, *queued]]
    assert results[0].status is TaskStatus.COMPLETED
    assert all(
        r.status is TaskStatus.COMPLETED
        or (r.status is TaskStatus.FAILED and "closed before the task ran" in (r.error or ""))
        for r in results[1:]
    )
    assert (await manager.get_pool(pool_id)).status is PoolStatus.CLOSED
    assert pool_id not in [p.spec.id for p in await manager.list_pools()]
    with pytest.raises(PoolUnavailable, match="is closed"):
        await manager.submit({"call": "noop"}, pool_id=pool_id)


async def test_a_killed_worker_is_replaced_and_its_tasks_rerun(
    orchestrator: Any, manager: PoolManager, settings: Settings
) -> None:
    pool_id = await manager.spawn_pool("local", name="p", min_workers=1, concurrency=4)
    ids = await manager.submit_many([{"call": "sleep", "args": [0.5]}] * 4, pool_id=pool_id)
    await wait_until(lambda: is_running(manager, ids[0]), what="the task to start")
    victim = (await manager.status(ids[0])).worker_id or ""
    proc = orchestrator.local.pools[pool_id].processes[victim]
    os.kill(proc.process.pid, 9)
    results: list[TaskResult] = [await manager.result(i, timeout=30) for i in ids]
    assert all(r.ok for r in results)
    assert all(r.worker_id != victim for r in results)
    assert all(r.attempts == 2 for r in results)


async def test_a_full_inbox_is_an_error_the_sender_sees(
    orchestrator: Any, manager: PoolManager
) -> None:
    pool_id = await manager.spawn_pool("local", name="p", min_workers=0, inbox_max=2)
    shared = TaskResult(task_id="t-x", status=TaskStatus.COMPLETED, output="data")
    await manager.send_to_pool(pool_id, shared, from_pool="elsewhere")
    await manager.send_to_pool(pool_id, shared, from_pool="elsewhere")
    with pytest.raises(InboxFull, match="full"):
        await manager.send_to_pool(pool_id, shared)


async def test_scale_changes_the_number_of_workers(orchestrator: Any, manager: PoolManager) -> None:
    pool_id = await manager.spawn_pool("local", name="p", min_workers=1, max_workers=3)
    await manager.scale(pool_id, 3, wait=True)
    info = await manager.get_pool(pool_id)
    assert info.status is PoolStatus.RUNNING and info.target_workers == 3
    health = await manager.health_check()
    assert health["pools"][pool_id]["live_workers"] == 3
    with pytest.raises(InvalidRequest, match="outside"):
        await manager.scale(pool_id, 9)


async def test_a_result_shared_with_another_pool_lands_in_its_memory(
    orchestrator: Any, manager: PoolManager, redis: aioredis.Redis, settings: Settings
) -> None:
    a, b = await two_pools(manager)
    result = await manager.execute_on_pool(a, {"prompt": "for b", "share_with": [b]}, timeout=15)
    memory = settings.keys.pool_memory(b)

    async def filed() -> bool:
        records = [fields for _, fields in await redis.xrange(memory)]
        return any(
            r[b"task"] == result.task_id.encode() and r[b"tags"] == b"shared" for r in records
        )

    await wait_until(filed, what="the shared result in pool b's memory")
    assert await redis.xlen(settings.keys.pool_inbox(b)) == 0


async def test_a_share_to_a_full_inbox_is_dead_lettered_not_dropped(
    orchestrator: Any, manager: PoolManager, redis: aioredis.Redis, settings: Settings
) -> None:
    sender = await manager.spawn_pool("local", name="s", min_workers=1)
    full = await manager.spawn_pool("local", name="f", min_workers=0, inbox_max=1)
    shared = TaskResult(task_id="t-x", status=TaskStatus.COMPLETED, output="data")
    await manager.send_to_pool(full, shared)
    result = await manager.execute_on_pool(
        sender, {"prompt": "x", "share_with": [full]}, timeout=15
    )
    assert result.ok

    async def dead_lettered() -> bool:
        return any(
            b"not shared with pool" in f[b"reason"]
            for _, f in await redis.xrange(settings.keys.dlq)
        )

    await wait_until(dead_lettered, what="the dead letter of the unshared result")


async def test_a_hung_command_is_killed_at_its_timeout(
    orchestrator: Any, manager: PoolManager
) -> None:
    pool_id = await manager.spawn_pool(
        "local", name="sh", min_workers=1, worker_type="shell", allowed_commands=["sleep", "echo"]
    )
    hung = await manager.execute_on_pool(
        pool_id, {"command": ["sleep", "60"], "timeout": 0.5, "max_attempts": 1}, timeout=20
    )
    assert hung.status is TaskStatus.DEAD_LETTERED
    assert "timed out after 0.5s" in (hung.error or "")
    ok = await manager.execute_on_pool(pool_id, {"command": ["echo", "hi"]}, timeout=10)
    assert ok.ok and ok.output.strip() == "hi" and ok.exit_code == 0
    refused = await manager.execute_on_pool(
        pool_id, {"command": ["rm", "-rf", "/tmp/x"], "max_attempts": 1}, timeout=10
    )
    assert refused.status is TaskStatus.FAILED and refused.attempts == 1
    assert "not in this pool's allowed_commands" in (refused.error or "")


async def test_a_dead_letter_keeps_its_task_and_can_be_requeued(
    orchestrator: Any, manager: PoolManager, redis: aioredis.Redis, settings: Settings
) -> None:
    pool_id = await manager.spawn_pool("local", name="p", min_workers=1)
    failed = await manager.execute_on_pool(
        pool_id, {"call": "fail", "args": ["boom"], "max_attempts": 2}, timeout=15
    )
    assert failed.status is TaskStatus.DEAD_LETTERED
    total, letters = await manager.dead_letters()
    assert total == 1 and letters[0].task_id == failed.task_id
    assert letters[0].message is not None and letters[0].message.task.call == "fail"
    assert len(letters[0].history) == 2 and "boom" in letters[0].history[-1]
    _, again = await manager.requeue_dead_letter(letters[0].entry_id)
    assert again != failed.task_id
    assert (await manager.result(again, timeout=15)).status is TaskStatus.DEAD_LETTERED
    total, letters = await manager.dead_letters()
    assert total == 1 and letters[0].task_id == again


async def test_random_spreads_over_both_pools(orchestrator: Any, manager: PoolManager) -> None:
    a, b = await two_pools(manager)
    results = await manager.execute_batch(
        [{"call": "noop", "strategy": "random"} for _ in range(30)], timeout=30
    )
    picks = Counter(r.pool_id for r in results)
    assert set(picks) == {a, b}  # all 30 on one pool: probability 2 * 2**-30


async def test_one_idempotency_key_twice_in_a_batch_submits_one_task(
    orchestrator: Any, manager: PoolManager
) -> None:
    pool_id = await manager.spawn_pool("local", name="p", min_workers=1)
    ids = await manager.submit_many(
        [
            {"call": "add", "args": [1, 2], "idempotency_key": "k"},
            {"call": "add", "args": [1, 2], "idempotency_key": "k"},
        ],
        pool_id=pool_id,
    )
    assert ids[0] == ids[1]
    assert (await manager.result(ids[0], timeout=15)).output == 3


async def test_another_client_can_wait_for_many_tasks_at_once(
    orchestrator: Any, manager: PoolManager, settings: Settings
) -> None:
    pool_id = await manager.spawn_pool("local", name="p", min_workers=1, concurrency=50)
    ids = await manager.submit_many([{"call": "sleep", "args": [0.2]}] * 300, pool_id=pool_id)
    async with PoolManager(settings) as other:  # one events reader serves all 300 waits
        results = await asyncio.gather(*(other.result(i, timeout=30) for i in ids))
    assert all(r.ok for r in results)
