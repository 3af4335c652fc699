"""The BullMQ part of a run: its Node environment, then each BullMQ figure in turn.

Throughput at concurrency 10 (the figure issue 15's targets compare with) for every worker
count of the run and at concurrency 1 (BullMQ's default) with one worker process; latency at
both; the mixed-duration plan with 2 worker processes x 4 slots. Each figure has a key prefix
of its own, deleted afterwards. When the environment cannot be made (no Node, no npm, no
registry) every figure is reported as unavailable with the reason.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from bench import bullmq_bench, mixed
from bench.peer import prepare

if TYPE_CHECKING:
    from bench.runner import Runner

CONCURRENCIES = (10, 1)
"""10: the figure the targets use; 1: BullMQ's default."""


def planned(runner: Runner) -> list[tuple[str, str]]:
    """(key, setup) of every BullMQ figure this run wants."""
    cfg = runner.cfg
    keys: list[tuple[str, str]] = []
    if "throughput" in cfg.scenarios:
        for c in CONCURRENCIES:
            for w in cfg.workers if c == 10 else (1,):
                keys.append(
                    (
                        f"throughput/{bullmq_bench.system_name(c)}/{w}",
                        f"{w} worker process(es), concurrency {c}",
                    )
                )
    if "latency" in cfg.scenarios:
        for c in CONCURRENCIES:
            keys.append(
                (f"latency/{bullmq_bench.system_name(c)}", f"1 worker process, concurrency {c}")
            )
    if "mixed" in cfg.scenarios:
        slots = f"{mixed.WORKERS} worker processes x {mixed.SLOTS_PER_WORKER}"
        keys.append(("mixed/bullmq", slots))
    return keys


async def bullmq_section(runner: Runner) -> None:
    """Measure every BullMQ figure the run wants."""
    cfg = runner.cfg
    keys = planned(runner)
    make = partial(bullmq_bench.ensure_bullmq_env, cfg.bullmq_dir)
    where = f"its Node environment in {cfg.bullmq_dir}"
    env = await prepare(runner, "bullmq", "BullMQ", where, make, keys)
    if env is None:
        return
    durations = mixed.plan(cfg.mixed_tasks)
    for key, setup in keys:
        parts = key.split("/")
        rig = (env, runner.url, runner.prefix("-".join(parts)), runner.work)
        concurrency = 1 if parts[1] == "bullmq-c1" else 10
        if parts[0] == "throughput":
            await runner.measure(
                key,
                setup,
                partial(
                    bullmq_bench.throughput,
                    *rig,
                    workers=int(parts[2]),
                    concurrency=concurrency,
                    n=cfg.tasks,
                    warmup=cfg.warmup,
                    timeout=cfg.scenario_timeout,
                ),
                repeat=cfg.repeat,
            )
        elif parts[0] == "latency":
            await runner.measure(
                key,
                setup,
                partial(
                    bullmq_bench.latency,
                    *rig,
                    concurrency=concurrency,
                    n=cfg.latency_round_trips,
                    warmup=min(50, cfg.warmup),
                    timeout=cfg.scenario_timeout,
                ),
            )
        else:
            await runner.measure(
                key,
                setup,
                partial(
                    bullmq_bench.mixed,
                    *rig,
                    plan_s=durations,
                    workers=mixed.WORKERS,
                    slots=mixed.SLOTS_PER_WORKER,
                    timeout=cfg.scenario_timeout,
                ),
            )
