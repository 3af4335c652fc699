"""The BullMQ part of a run: its Node environment, then each BullMQ figure in turn.

Throughput at concurrency 10 (the figure issue 15's targets compare with) for every worker
count of the run and at concurrency 1 (BullMQ's default) with one worker process; latency at
both; the mixed-duration plan with 2 worker processes x 4 slots. Each figure has a key prefix
of its own, deleted afterwards. When the environment cannot be made (no Node, no npm, no
registry) every figure is reported as unavailable with the reason.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import TYPE_CHECKING

from bench import bullmq_bench, mixed
from bench.stats import Figure

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
    if not keys:
        return
    runner.log(f"BullMQ: preparing its Node environment in {cfg.bullmq_dir}")
    try:
        env = await asyncio.to_thread(bullmq_bench.ensure_bullmq_env, cfg.bullmq_dir)
    except bullmq_bench.BullmqUnavailable as exc:
        runner.versions["bullmq"] = f"unavailable: {exc}"
        runner.fail_all(keys, f"BullMQ environment unavailable: {exc}", status="unavailable")
        return
    runner.versions["bullmq"] = env.describe
    durations = mixed.plan(cfg.mixed_tasks)
    for key, setup in keys:
        parts = key.split("/")
        prefix = runner.prefix("-".join(parts))
        if parts[0] == "throughput":
            concurrency = 1 if parts[1] == "bullmq-c1" else 10
            await runner.measure(
                key,
                setup,
                partial(
                    bullmq_bench.throughput,
                    env,
                    runner.url,
                    prefix,
                    runner.work,
                    workers=int(parts[2]),
                    concurrency=concurrency,
                    n=cfg.tasks,
                    warmup=cfg.warmup,
                    timeout=cfg.scenario_timeout,
                ),
                repeat=cfg.repeat,
            )
        elif parts[0] == "latency":
            concurrency = 1 if parts[1] == "bullmq-c1" else 10
            await runner.measure(
                key,
                setup,
                partial(
                    bullmq_bench.latency,
                    env,
                    runner.url,
                    prefix,
                    runner.work,
                    concurrency=concurrency,
                    n=cfg.latency_round_trips,
                    warmup=min(50, cfg.warmup),
                    timeout=cfg.scenario_timeout,
                ),
            )
        else:

            async def make_mixed(prefix: str = prefix) -> Figure:
                makespan = await bullmq_bench.mixed(
                    env,
                    runner.url,
                    prefix,
                    runner.work,
                    plan_s=durations,
                    workers=mixed.WORKERS,
                    slots=mixed.SLOTS_PER_WORKER,
                    timeout=cfg.scenario_timeout,
                )
                return mixed.mixed_figure(
                    "bullmq",
                    durations,
                    makespan,
                    workers=mixed.WORKERS,
                    slots=mixed.SLOTS_PER_WORKER,
                )

            await runner.measure(key, setup, make_mixed)
