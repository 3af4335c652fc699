"""The long-running parts of the `mahavishnu` CLI: the `up` runner (broker, orchestrator,
default or demo pool), the demo batch with its progress bar and summary, and the live monitor."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from orchestrator.cli.render import (
    demo_table,
    emit_json,
    monitor_view,
    percentile,
    stderr_console,
    stdout_console,
)
from orchestrator.memory.stats import memory_report
from orchestrator.memory.view import memory_json, memory_view
from shared.client import PoolManager, make_pool_spec, make_task
from shared.config import Settings
from shared.errors import (
    BrokerError,
    MahavishnuError,
    PoolUnavailable,
    ResultTimeout,
)
from shared.models import ACCEPTING_STATUSES, PoolInfo, TaskResult, new_id

T = TypeVar("T")

log = logging.getLogger("mahavishnu.cli")


def stop_event() -> asyncio.Event:
    """An event that SIGINT and SIGTERM set (instead of raising KeyboardInterrupt)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


# ---------------------------------------------------------------------------------- monitor


MONITOR_MEMORY_KEY = "_memory_sync"  # per destination totals (no pool id starts with "_")


async def monitor(
    settings: Settings, pool_id: str | None, *, watch: bool, interval: float, json_out: bool
) -> None:
    """`pool monitor`: one snapshot (table or JSON), or a live table until Ctrl-C."""
    async with PoolManager(settings) as pools:

        async def snapshot() -> tuple[list[PoolInfo], dict[str, Any] | None, Any]:
            found = [await pools.get_pool(pool_id)] if pool_id else await pools.list_pools()
            memory = await memory_report(pools.redis, settings, [p.spec.id for p in found])
            return found, (await pools.health_check() if pool_id else None), memory

        def view(found: list[PoolInfo], health: dict[str, Any] | None, memory: Any) -> Any:
            enabled = settings.memory_aggregation_enabled
            if not enabled and not any(d.synced for d in memory[0].values()):
                return monitor_view(found, health)  # memory sync was never used: no noise
            return Group(monitor_view(found, health), memory_view(*memory, enabled=enabled))

        found, health, memory = await snapshot()
        if json_out:
            doc: dict[str, Any] = {p.spec.id: p.load.model_dump() for p in found}
            if health is not None and pool_id:
                doc[pool_id]["workers_detail"] = health["pools"].get(pool_id, {}).get("workers")
            synced = memory_json(*memory)
            for pool, stats in synced["pools"].items():
                doc[pool]["memory"] = stats
            doc[MONITOR_MEMORY_KEY] = synced["destinations"]
            emit_json(doc)
            return
        if not watch:
            stdout_console().print(view(found, health, memory))
            return
        stop = stop_event()
        with Live(view(found, health, memory), console=stdout_console()) as live:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
                if not stop.is_set():
                    live.update(view(*await snapshot()))


# ---------------------------------------------------------------------------------- up


DEMO_LABEL = "demo"


def demo_tasks(count: int, run_id: str) -> list[tuple[dict[str, Any], Any]]:
    """`count` demo tasks (echo, add, sleep and a couple of prompts) with their expected output.

    Each requires the label `demo=<run_id>`, so routing sends them to this run's demo pool only.
    """
    prompts = {count // 3, (2 * count) // 3}
    planned: list[tuple[dict[str, Any], Any]] = []
    for i in range(count):
        base: dict[str, Any] = {"labels": {DEMO_LABEL: run_id}, "tags": ["demo"], "timeout": 30.0}
        if i in prompts:
            text = f"demo prompt #{i}: say hello to the pools"
            planned.append(({**base, "prompt": text}, text))
        elif i % 3 == 0:
            planned.append(({**base, "call": "echo", "args": [f"hello #{i}"]}, f"hello #{i}"))
        elif i % 3 == 1:
            planned.append(({**base, "call": "add", "args": [i, i]}, 2 * i))
        else:
            planned.append(({**base, "call": "sleep", "args": [0.01]}, 0.01))
    return planned


async def run_demo(
    pools: PoolManager, count: int, run_id: str, limit: float, console: Console
) -> dict[str, Any]:
    """Submit the demo batch through routing, follow it with a progress bar, summarise it."""
    planned = demo_tasks(count, run_id)
    specs = [make_task(data, settings=pools.settings) for data, _ in planned]
    expected = {spec.id: want for spec, (_, want) in zip(specs, planned, strict=True)}
    deadline = time.monotonic() + limit
    sent: dict[str, float] = {}
    outcome: dict[str, tuple[TaskResult | None, float, str]] = {}
    all_done = asyncio.Event()
    waits: list[asyncio.Task[TaskResult]] = []
    start = time.monotonic()
    columns = (TextColumn("demo"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("demo", total=count)

        def finished(task_id: str, wait: asyncio.Task[TaskResult]) -> None:
            if wait.cancelled():
                return
            error = wait.exception()
            found = None if error is not None else wait.result()
            reason = "not finished in time" if isinstance(error, ResultTimeout) else str(error)
            outcome[task_id] = (found, time.monotonic(), reason if error else "")
            progress.advance(bar)
            if len(outcome) == count:
                all_done.set()

        current = asyncio.current_task()
        try:
            for first in range(0, count, 500):
                if current is not None and current.cancelling():
                    raise asyncio.CancelledError  # a cancel that redis-py's wait_for swallowed
                chunk = specs[first : first + 500]
                now = time.monotonic()
                await pools.submit_many(chunk)
                for spec in chunk:
                    sent[spec.id] = now
                    left = max(0.1, deadline - now)
                    waits.append(asyncio.create_task(pools.result(spec.id, left)))
                    waits[-1].add_done_callback(functools.partial(finished, spec.id))
            await all_done.wait()
        finally:
            for wait in waits:
                wait.cancel()
    elapsed = time.monotonic() - start
    return summarise_demo(outcome, sent, expected, elapsed)


def summarise_demo(
    outcome: Mapping[str, tuple[TaskResult | None, float, str]],
    sent: Mapping[str, float],
    expected: Mapping[str, Any],
    elapsed: float,
) -> dict[str, Any]:
    """Counts, throughput and latency of a demo run (`outcome`: result, arrival, error)."""
    counts = {"completed": 0, "failed": 0, "dead_lettered": 0, "cancelled": 0, "timed_out": 0}
    wrong = 0
    latencies: list[float] = []
    errors: dict[str, int] = {}
    by_pool: dict[str, int] = {}
    for task_id, (found, at, error) in outcome.items():
        if found is None:
            counts["timed_out"] += 1
            errors[error[:200]] = errors.get(error[:200], 0) + 1
            continue
        latencies.append((at - sent[task_id]) * 1000)
        by_pool[found.pool_id or "?"] = by_pool.get(found.pool_id or "?", 0) + 1
        status = str(found.status)
        counts[status if status in counts else "failed"] += 1
        if found.ok and found.output != expected[task_id]:
            wrong += 1
            errors[f"wrong output {found.output!r}"] = 1
        elif not found.ok:
            reason = (found.error or status)[:200]
            errors[reason] = errors.get(reason, 0) + 1
    total = len(expected)
    return {
        "tasks": total,
        **counts,
        "wrong_output": wrong,
        "elapsed_s": round(elapsed, 3),
        "throughput_per_s": round(counts["completed"] / elapsed, 1) if elapsed else 0.0,
        "latency_ms": {
            "p50": round(percentile(latencies, 0.50), 2),
            "p99": round(percentile(latencies, 0.99), 2),
            "max": round(max(latencies, default=0.0), 2),
        },
        "by_pool": by_pool,
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
        "ok": counts["completed"] == total and wrong == 0,
    }


async def _first(
    work: Awaitable[T], runner: asyncio.Task[None], stop: asyncio.Event
) -> tuple[bool, T | None]:
    """Await `work` unless a stop is requested or the orchestrator ends first.

    Returns (True, result) when the work finished, (False, None) on a stop request; raises
    the orchestrator's error (or BrokerError) when it ended on its own.
    """
    job = asyncio.ensure_future(work)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({job, runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if job.done():
        return True, job.result()
    # On Python 3.11 a cancel can be lost: redis-py's writes run in asyncio.wait_for, which
    # returns the inner result when both finish at once. Cancel until the job really ends.
    while not job.done():
        job.cancel()
        await asyncio.wait({job}, timeout=1.0)
    if not job.cancelled() and job.exception() is not None:
        log.debug("stopped job ended with %r", job.exception())
    if runner.done():
        runner.result()
        raise BrokerError("the orchestrator stopped on its own; see the log above")
    return False, None


async def _close_pool(pools: PoolManager, pool_id: str, runner: asyncio.Task[None]) -> None:
    """Close a pool (even after Ctrl-C), asking again when the close seems lost; warn on failure.

    A close that reaches the orchestrator while a pool is still starting can be overwritten by
    a concurrent supervision pass, so a pool still not closed after 10 s is asked once more.
    """
    problem: MahavishnuError | None = None
    for _ in range(3):
        try:  # an event nobody sets: the close runs to its end even after a stop request
            await _first(pools.close_pool(pool_id, timeout=10.0), runner, asyncio.Event())
            return
        except PoolUnavailable as exc:
            problem = exc
        except MahavishnuError as exc:
            problem = exc
            break
    stderr_console().print(Text(f"warning: pool {pool_id} not closed: {problem}", style="yellow"))


async def _default_pool(
    pools: PoolManager, settings: Settings, workers: int | None
) -> tuple[str, bool]:
    """The live pool named `default` (scaled to `workers` if given), else a new local one."""
    for info in await pools.list_pools():
        if info.spec.name == "default" and info.status in ACCEPTING_STATUSES:
            spec = info.spec
            wanted = info.target_workers if workers is None else workers
            if wanted != info.target_workers and spec.min_workers <= wanted <= spec.max_workers:
                await pools.scale(spec.id, wanted)
            return spec.id, True
    count = settings.pool_default_min_workers if workers is None else workers
    spec = make_pool_spec(
        "local",
        None,
        name="default",
        min_workers=count,
        max_workers=max(count, settings.pool_default_max_workers),
        concurrency=settings.worker_concurrency,
    )
    await pools.spawn_pool(config=spec)
    return spec.id, False


def _where_view(where: Mapping[str, Any]) -> Table:
    table = Table(title="mahavishnu is up", title_justify="left", show_header=False, box=None)
    table.add_column("what", style="bold")
    table.add_column("where")
    for name, value in where.items():
        table.add_row(name.replace("_", " "), str(value))
    return table


async def run_up(
    settings: Settings,
    *,
    workers: int | None,
    demo: bool,
    tasks: int,
    timeout: float,
    json_out: bool,
) -> int:
    """`mahavishnu up`: broker if needed, an orchestrator, a pool; until Ctrl-C or the demo ends.

    Returns the exit code: 0, or 1 when a demo task did not complete, 130 when interrupted.
    """
    from orchestrator.broker import ensure_broker
    from orchestrator.orchestrator import Orchestrator
    from shared.metrics import install as install_metrics

    info = stderr_console() if json_out else stdout_console()
    stop = stop_event()
    broker = await ensure_broker(settings)
    where: dict[str, Any] = {"redis_url": settings.redis_url_redacted}
    where["broker"] = f"embedded redis-server pid {broker.pid}" if broker else "already running"
    if broker:
        where["broker_data"] = str(broker.data_dir)
    where["key_prefix"] = settings.key_prefix
    metrics = None
    try:
        metrics = install_metrics(settings, role="orchestrator")
        if metrics is not None:
            where["metrics"] = f"http://{settings.metrics_host}:{metrics.port}/metrics"
        orch = Orchestrator(settings)
        runner = asyncio.create_task(orch.run(), name="orchestrator")
        try:
            ready, _ = await _first(orch.wait_ready(), runner, stop)
            if not ready:
                return 130
            where["orchestrator"] = orch.id
            async with PoolManager(settings) as pools:
                if demo:
                    return await _up_demo(
                        pools, settings, where, runner, stop, info,
                        workers=workers, tasks=tasks, timeout=timeout, json_out=json_out,
                    )  # fmt: skip
                done, made = await _first(_default_pool(pools, settings, workers), runner, stop)
                if not done or made is None:
                    return 130
                where["pool"] = f"{made[0]} (default, {'reused' if made[1] else 'new'})"
                if json_out:
                    emit_json({**where, "pool_id": made[0], "reused": made[1]})
                else:
                    info.print(_where_view(where))
                    info.print(f"try: mahavishnu pool exec {made[0]} --prompt hello")
                    info.print("Ctrl-C stops everything.")
                await _first(stop.wait(), runner, stop)
                return 0
        finally:
            info.print("stopping: the orchestrator drains its workers…")
            orch.request_stop()
            await asyncio.gather(runner, return_exceptions=True)
    finally:
        if metrics is not None:
            metrics.close()
        if broker is not None:
            await broker.stop()


async def _up_demo(
    pools: PoolManager,
    settings: Settings,
    where: dict[str, Any],
    runner: asyncio.Task[None],
    stop: asyncio.Event,
    info: Console,
    *,
    workers: int | None,
    tasks: int,
    timeout: float,
    json_out: bool,
) -> int:
    """The demo part of `up --demo`: its own pool, the batch, the summary, then close the pool."""
    run_id = new_id("demo")
    count = max(1, settings.pool_default_min_workers if workers is None else workers)
    spec = make_pool_spec(
        "local",
        None,
        name="demo",
        min_workers=count,
        max_workers=max(count, settings.pool_default_max_workers),
        concurrency=settings.worker_concurrency,
        labels={DEMO_LABEL: run_id},
    )
    summary: dict[str, Any] | None = None
    try:
        done, _ = await _first(pools.spawn_pool(config=spec), runner, stop)
        if not done:
            return 130
        where["pool"] = f"{spec.id} (demo, {count} worker(s))"
        if not json_out:
            info.print(_where_view(where))
            info.print(f"running {tasks} demo tasks…")
        done, summary = await _first(
            run_demo(pools, tasks, run_id, timeout, stderr_console()), runner, stop
        )
    finally:
        info.print("closing the demo pool…")
        await _close_pool(pools, spec.id, runner)
    if summary is None:
        return 130
    if json_out:
        emit_json({**summary, **where, "pool_id": spec.id})
    else:
        info.print(demo_table(summary))
        for reason, times in summary["errors"].items():
            info.print(Text(f"{times} x {reason}", style="red"))
    return 0 if summary["ok"] else 1
