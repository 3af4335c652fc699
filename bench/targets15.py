"""The targets of issue 15 (overtake BullMQ), judged against one run's figures.

Every target of the issue is listed, measured or not: throughput against BullMQ at
concurrency 10 and against the raw ceiling, latency, CPU per task of all our processes against
BullMQ's worker plus Redis, the mixed workload's makespan, and a new pool's first result. The
issue's "unchanged or better" targets are issue 5's (`bench/targets.py`) and are repeated from
there. The figures on a Redis Cluster come from a separate `--cluster` run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.stats import Figure
from bench.targets import Target, bound_text

if TYPE_CHECKING:
    from bench.report import Report

BULLMQ = "throughput/bullmq/1"
"""BullMQ's figure the targets compare with: one worker process at concurrency 10."""

UNCHANGED = ("Backlog:", "Redis memory per queued", "Worker RSS", "Orchestrator")
"""Issue 5's targets that issue 15 keeps (names start with these)."""

OUR_PROCESSES = ("client", "orchestrator", "workers", "redis")
BULLMQ_PROCESSES = ("workers", "redis")


def cpu_per_task(fig: Figure, groups: tuple[str, ...]) -> float:
    """CPU µs per task summed over these process groups."""
    return sum(fig.values.get(f"cpu_us_per_task.{g}", 0.0) for g in groups)


def evaluate_issue15(report: Report) -> list[Target]:
    """Judge every target of issue 15 (n/a where this run lacks a figure)."""
    get = report.get
    cores = report.meta.get("machine", {}).get("cores")
    targets: list[Target] = []

    def ratio(name: str, key: str, base_key: str, limit: float, op: str, unit: str) -> None:
        fig, base = get(key), get(base_key)
        measured = fig.primary / base.primary if fig and base and base.primary else None
        compared = f"{fig.primary:,.2f} vs {base.primary:,.2f} {unit}" if fig and base else ""
        raw = get(base_key) if "/raw" in base_key else get("throughput/raw/1")
        bound = bound_text(fig, raw, cores if unit == "tasks/s" else None)
        targets.append(Target(name, measured, limit, op, "ratio", compared, bound))

    for system, bullmq_floor, raw_floor in (("direct", 1.25, 0.4), ("routed", 1.0, 0.3)):
        key = f"throughput/{system}/1"
        ratio(
            f"Throughput, {system}, 1 worker process >= {bullmq_floor:g}x BullMQ at concurrency 10",
            key,
            BULLMQ,
            bullmq_floor,
            ">=",
            "tasks/s",
        )
        ratio(
            f"Throughput, {system}, 1 worker process >= {raw_floor:g}x the raw ceiling",
            key,
            "throughput/raw/1",
            raw_floor,
            ">=",
            "tasks/s",
        )
    ratio(
        "Latency p50, direct <= BullMQ's p50", "latency/direct", "latency/bullmq", 1.0, "<=", "ms"
    )
    ratio(
        "Latency p50, direct <= 3x the raw round trip",
        "latency/direct",
        "latency/raw",
        3,
        "<=",
        "ms",
    )
    ratio(
        "Latency p50, routed <= 5x the raw round trip",
        "latency/routed",
        "latency/raw",
        5,
        "<=",
        "ms",
    )
    for system in ("direct", "routed"):
        fig = get(f"latency/{system}")
        measured, compared = None, ""
        if fig is not None and fig.values.get("p50_ms"):
            p50, p99 = fig.values["p50_ms"], fig.values["p99_ms"]
            measured, compared = p99 / p50, f"p99 {p99:.2f} ms vs p50 {p50:.2f} ms"
        targets.append(
            Target(f"Latency p99 <= 3x its p50 ({system})", measured, 3.0, "<=", "ratio", compared)
        )
    bullmq = get(BULLMQ)
    for system in ("direct", "routed"):
        fig = get(f"throughput/{system}/1")
        measured, compared = None, ""
        if fig is not None and bullmq is not None:
            ours = cpu_per_task(fig, OUR_PROCESSES)
            theirs = cpu_per_task(bullmq, BULLMQ_PROCESSES)
            measured = ours / theirs if theirs else None
            compared = (
                f"ours {ours:,.0f} µs/task (client, orchestrator, worker, Redis) vs BullMQ "
                f"{theirs:,.0f} µs/job (worker, Redis; its client another "
                f"{bullmq.values.get('cpu_us_per_task.client', 0.0):,.0f})"
            )
        targets.append(
            Target(
                f"CPU per task, all our processes ({system}) <= BullMQ worker + Redis per job",
                measured,
                1.0,
                "<=",
                "ratio",
                compared,
                bound_text(fig, None) if measured is not None and measured > 1.0 else "",
            )
        )
    mixed = get("mixed/direct")
    targets.append(
        Target(
            "Mixed workload makespan <= 1.10x its lower bound",
            mixed.values["x_lower_bound"] if mixed else None,
            1.10,
            "<=",
            "ratio",
            (
                f"{mixed.values['makespan_s']:.2f} s vs lower bound "
                f"{mixed.values['lower_bound_s']:.2f} s"
                if mixed
                else ""
            ),
        )
    )
    ratio("Mixed workload makespan <= BullMQ's", "mixed/direct", "mixed/bullmq", 1.0, "<=", "s")
    startup = get("startup/direct")
    targets.append(
        Target(
            "A new local pool answers its first task within 0.5 s of spawn_pool returning",
            startup.values["first_result_max_s"] if startup else None,
            0.5,
            "<=",
            "s",
            (
                f"slowest of {startup.values['spawns']:.0f} pools; median "
                f"{startup.values['first_result_s']:.3f} s (spawn_pool itself took "
                f"{startup.values['spawn_pool_s']:.2f} s)"
                if startup
                else ""
            ),
        )
    )
    targets += [t for t in report.targets if t.name.startswith(UNCHANGED) or " pools: " in t.name]
    return targets
