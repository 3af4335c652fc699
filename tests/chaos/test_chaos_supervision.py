"""Chaos for pool supervision: a storm of scale changes, hand-started external workers (one
SIGKILLed) in a supervised pool, and a pool whose workers crash at start."""

from __future__ import annotations

import asyncio
import random
import signal

from shared.connection import decode_hash
from shared.models import PoolStatus, TaskStatus
from tests.chaos.conftest import Chaos, assert_nothing_lost
from tests.conftest import wait_until

STORM_CYCLES = 50


async def test_scale_storm_under_steady_load(chaos: Chaos) -> None:
    chaos.start_orchestrator("o1")
    pool_id = await chaos.spawn("p", min_workers=1, max_workers=4, concurrency=4)
    rng = random.Random(4242)
    targets = []
    for _ in range(STORM_CYCLES):
        target = rng.randint(1, 4)
        targets.append(target)
        await chaos.manager.scale(pool_id, target)
        await chaos.submit(6, seconds=0.02, max_attempts=5)
        await asyncio.sleep(rng.uniform(0.05, 0.3))  # the storm's pace, not a synchronisation
    chaos.figures.faults = f"{STORM_CYCLES} scale changes between 1 and 4 workers (seed 4242)"
    fig = await chaos.finish()
    assert_nothing_lost(fig)
    assert fig.serving == f"{targets[-1]}/{targets[-1]}"
    info = await chaos.manager.get_pool(pool_id)
    assert (info.target_workers, info.load.draining, info.load.stuck) == (targets[-1], 0, 0)
    starts = chaos.worker_starts(pool_id)
    chaos.figures.notes.append(
        f"{starts} worker processes started; restarts {info.restarts}"
        + (f", last because {info.last_restart_reason}" if info.restarts else "")
    )


async def test_external_workers_join_and_one_is_killed(chaos: Chaos) -> None:
    chaos.start_orchestrator("o1")
    pool_id = await chaos.spawn("p", min_workers=2, concurrency=4)
    await chaos.submit(40, seconds=0.05, max_attempts=5)
    doomed = chaos.start_worker(pool_id, "external-1")
    survivor = chaos.start_worker(pool_id, "external-2")

    async def joined() -> bool:
        info = await chaos.manager.get_pool(pool_id)
        return (info.load.local_workers, info.load.external_workers) == (2, 2)

    await wait_until(joined, timeout=30, what="2 local + 2 external workers")
    await chaos.submit(80, seconds=0.05, max_attempts=5)
    await chaos.running(at_least=50)
    doomed.send_signal(signal.SIGKILL)
    await chaos.submit(40, seconds=0.05, max_attempts=5)
    chaos.figures.faults = "2 external workers join; SIGKILL 1 of them"
    fig = await chaos.finish()
    assert_nothing_lost(fig)
    # the orchestrator neither replaced the external worker nor stopped the other one
    assert chaos.worker_starts(pool_id) == 2
    assert survivor.poll() is None
    beats = [b for b in (await chaos.pool_workers())[pool_id][2] if not b.get("managed_by")]
    assert [(b["pid"], b["status"], b["draining_since"]) for b in beats] == [
        (str(survivor.pid), "running", "0.0")  # never asked to drain: no SIGTERM reached it
    ]
    info = await chaos.manager.get_pool(pool_id)
    assert (info.load.local_workers, info.load.external_workers) == (2, 1)
    chaos.figures.notes.append(f"external worker pid {survivor.pid} alive, never signalled")


async def test_a_pool_whose_workers_crash_at_start_is_backed_off_and_failed(chaos: Chaos) -> None:
    chaos.start_orchestrator("o1")
    healthy = await chaos.spawn("ok", min_workers=1, concurrency=8)
    crashing = await chaos.manager.spawn_pool(
        "local",
        name="crash",
        min_workers=2,
        functions={"never": "tests.chaos.crashing:never"},
        wait=False,
    )

    async def registered() -> bool:
        return bool(await chaos.redis.exists(chaos.keys.pool(crashing)))

    await wait_until(registered, what="the crashing pool to be registered")
    direct = [
        await chaos.manager.submit({"call": "never", "args": [f"d{n}"]}, pool_id=crashing)
        for n in range(3)
    ]
    await chaos.submit(60, seconds=0.01)  # routed: only the healthy pool can take them

    async def failed() -> bool:
        return (await chaos.manager.get_pool(crashing)).status is PoolStatus.FAILED

    await wait_until(failed, timeout=60, what="the crashing pool to be failed")
    starts = chaos.worker_starts(crashing)
    info = await chaos.manager.get_pool(crashing)
    chaos.figures.faults = f"a pool whose workers raise at import: {starts} starts, then failed"
    fig = await chaos.finish()
    assert_nothing_lost(fig)
    assert 3 <= starts <= 5, starts
    assert "cannot be imported" in info.detail and "refuses to load" in info.detail, info.detail
    assert info.restarts >= 2 and "exited with code 2" in info.last_restart_reason, info
    for task_id in direct:  # its queued direct tasks fail with the reason, never wait forever
        result = await chaos.manager.result(task_id, timeout=10)
        assert result.status is TaskStatus.FAILED and crashing in (result.error or ""), result
    raw = decode_hash(await chaos.redis.hgetall(chaos.keys.pool(healthy)))
    assert raw["status"] == "running", raw
    chaos.figures.notes.append(f"failed with: {info.detail}")


async def test_workers_stopped_while_starting_are_not_crashes(chaos: Chaos) -> None:
    chaos.start_orchestrator("o1")
    pool_id = await chaos.spawn("p", min_workers=1, max_workers=4)
    await chaos.manager.scale(pool_id, 4)

    async def three_more() -> bool:
        return chaos.worker_starts(pool_id) == 4

    await wait_until(three_more, what="3 more worker processes")
    await chaos.manager.scale(pool_id, 1)  # they are still importing: no handler yet
    await chaos.submit(10)
    chaos.figures.faults = "scale 1 -> 4 -> 1 while 3 new workers start"
    fig = await chaos.finish()
    assert_nothing_lost(fig)
    info = await chaos.manager.get_pool(pool_id)
    assert (info.restarts, info.last_restart_reason) == (0, ""), info
