"""The arq part of a run: its virtual environment, then each arq figure in turn.

Throughput for every worker count of the run, latency, and the mixed-duration plan with 2
worker processes x max_jobs=4, with arq's defaults and (unless `--no-arq-tuned`) tuned for
speed. Each figure has an arq queue of its own. When the environment cannot be made (no
network, no pip) every figure is reported as unavailable with the reason.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from bench import arq_bench, mixed
from bench.peer import prepare

if TYPE_CHECKING:
    from bench.runner import Runner


def planned(runner: Runner) -> list[tuple[str, str]]:
    """(key, setup) of every arq figure this run wants."""
    cfg = runner.cfg
    keys: list[tuple[str, str]] = []
    if "throughput" in cfg.scenarios:
        for w in cfg.workers:
            keys.append((f"throughput/arq/{w}", f"{w} worker process(es), defaults"))
            if cfg.arq_tuned:
                keys.append((f"throughput/arq-tuned/{w}", f"{w} worker process(es), tuned"))
    if "latency" in cfg.scenarios:
        keys.append(("latency/arq", "1 worker process, defaults"))
        if cfg.arq_tuned:
            keys.append(("latency/arq-tuned", "1 worker process, tuned"))
    if "mixed" in cfg.scenarios:
        slots = f"{mixed.WORKERS} worker processes x max_jobs={mixed.SLOTS_PER_WORKER}"
        keys.append(("mixed/arq", f"{slots}, the rest default"))
    return keys


async def arq_section(runner: Runner) -> None:
    """Measure every arq figure the run wants."""
    cfg = runner.cfg
    keys = planned(runner)
    make = partial(arq_bench.ensure_arq_env, cfg.arq_venv)
    where = f"its virtual environment in {cfg.arq_venv}"
    env = await prepare(runner, "arq", "arq", where, make, keys)
    if env is None:
        return
    for key, setup in keys:
        parts = key.split("/")
        tuned = parts[1] == "arq-tuned"
        queue = f"bench-{runner.run_id}-{'-'.join(parts)}:queue"
        rig = (env, runner.url, queue, runner.work)
        if parts[0] == "throughput":
            await runner.measure(
                key,
                setup,
                partial(
                    arq_bench.throughput,
                    *rig,
                    workers=int(parts[2]),
                    n=cfg.arq_tasks,
                    warmup=min(50, cfg.warmup),
                    tuned=tuned,
                    timeout=cfg.scenario_timeout,
                ),
                repeat=cfg.repeat if tuned else 1,
            )
        elif parts[0] == "mixed":
            await runner.measure(
                key,
                setup,
                partial(
                    arq_bench.mixed,
                    *rig,
                    plan_s=mixed.plan(cfg.mixed_tasks),
                    workers=mixed.WORKERS,
                    slots=mixed.SLOTS_PER_WORKER,
                    timeout=cfg.scenario_timeout,
                ),
            )
        else:
            rounds = cfg.arq_tuned_latency_round_trips if tuned else cfg.arq_latency_round_trips
            await runner.measure(
                key,
                setup,
                partial(
                    arq_bench.latency,
                    *rig,
                    n=rounds,
                    warmup=2,
                    tuned=tuned,
                    timeout=cfg.scenario_timeout,
                ),
            )
