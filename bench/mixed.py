"""The mixed-duration workload and the start-up of a new pool.

Mixed: 400 tasks (at scale 1), nine in ten sleeping 20 ms and one in ten sleeping 1 s,
shuffled with a fixed seed, submitted at once to 2 worker processes x 4 slots; the makespan
(first submit to last result) is set against its lower bound, the larger of total work /
slots and the longest task. The same plan runs through every system.

Start-up: a new local pool is spawned (`spawn_pool`, which returns once the pool runs) and one
no-op task is executed on it at once; the figure is the time from `spawn_pool` returning to
that task's result, so it counts whatever start-up of the worker processes `spawn_pool` did not
wait for.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Sequence

from bench.ours import NOOP, Cluster
from bench.stats import Figure, Stopwatch
from shared.models import TaskStatus

SHORT_S = 0.02
LONG_S = 1.0
LONG_EVERY = 10  # one task in ten is long
SEED = 15
WORKERS = 2
SLOTS_PER_WORKER = 4


def plan(tasks: int, seed: int = SEED) -> list[float]:
    """Task durations in seconds: one in `LONG_EVERY` long, the rest short, shuffled by `seed`."""
    longs = max(1, tasks // LONG_EVERY)
    durations = [LONG_S] * longs + [SHORT_S] * (tasks - longs)
    random.Random(seed).shuffle(durations)
    return durations


def lower_bound(durations: Sequence[float], slots: int) -> float:
    """No schedule can finish sooner: total work spread over every slot, or the longest task."""
    return max(sum(durations) / slots, max(durations, default=0.0))


def mixed_figure(
    system: str, durations: Sequence[float], makespan: float, *, workers: int, slots: int
) -> Figure:
    """The figure of one system's makespan over the plan."""
    total_slots = workers * slots
    bound = lower_bound(durations, total_slots)
    longs = sum(1 for d in durations if d >= LONG_S)
    return Figure(
        key=f"mixed/{system}",
        scenario="mixed",
        system=system,
        setup=(
            f"{len(durations)} tasks ({len(durations) - longs} x {SHORT_S * 1000:.0f} ms, "
            f"{longs} x {LONG_S:g} s, shuffled, seed {SEED}), "
            f"{workers} worker processes x {slots} slots"
        ),
        primary=makespan,
        unit="s makespan",
        values={
            "tasks": float(len(durations)),
            "makespan_s": makespan,
            "lower_bound_s": bound,
            "work_s": sum(durations),
            "slots": float(total_slots),
            "x_lower_bound": makespan / bound if bound else 0.0,
        },
    )


def sleep_task(seconds: float) -> dict[str, object]:
    """A task of the built-in `sleep` of a `python` pool."""
    return {"call": "sleep", "args": [seconds]}


async def ours(cluster: Cluster, durations: Sequence[float], *, timeout: float) -> Figure:
    """The plan through one pool of `WORKERS` worker processes (the cluster's concurrency)."""
    pool_id = await cluster.spawn("mixed", WORKERS)
    pm = cluster.manager
    clock = Stopwatch()
    ids = await pm.submit_many([sleep_task(d) for d in durations], pool_id=pool_id)
    results = await asyncio.wait_for(asyncio.gather(*(pm.result(i) for i in ids)), timeout)
    makespan = clock.elapsed
    bad = [r for r in results if r.status is not TaskStatus.COMPLETED]
    if bad:
        raise RuntimeError(f"{len(bad)} mixed task(s) did not complete; first: {bad[0]}")
    return mixed_figure("direct", durations, makespan, workers=WORKERS, slots=cluster.concurrency)


async def first_result(cluster: Cluster, *, spawns: int) -> Figure:
    """`spawns` new local pools in turn: from `spawn_pool` returning to its first result."""
    pm = cluster.manager
    waits: list[float] = []
    spawn_calls: list[float] = []
    for i in range(spawns):
        began = time.perf_counter()
        pool_id = await pm.spawn_pool(
            "local",
            name=f"startup{i}",
            min_workers=1,
            max_workers=1,
            concurrency=cluster.concurrency,
            timeout=90.0,
        )
        returned = time.perf_counter()
        cluster.pool_ids.append(pool_id)
        result = await pm.execute_on_pool(pool_id, NOOP, timeout=90.0)
        waits.append(time.perf_counter() - returned)
        spawn_calls.append(returned - began)
        if result.status is not TaskStatus.COMPLETED:
            raise RuntimeError(f"first task of pool {pool_id} did not complete: {result}")
        await cluster.live_workers(pool_id)  # note its worker's pid for the clean-up
        await pm.close_pool(pool_id, wait=False)  # its worker stops while the next one starts
    median = statistics.median(waits)
    return Figure(
        key="startup/direct",
        scenario="startup",
        system="direct",
        setup=f"{spawns} new local pools in turn, 1 worker process each, then execute_on_pool",
        primary=median,
        unit="s to first result",
        values={
            "spawns": float(spawns),
            "first_result_s": median,
            "first_result_max_s": max(waits),
            "first_result_min_s": min(waits),
            "spawn_pool_s": statistics.median(spawn_calls),
        },
    )
