"""Helpers of the `mahavishnu` commands in `orchestrator.cli`.

How things are shown (rich tables for people, one JSON document for `--json`), how tasks are
built from the payload options, the `pool monitor` loop and the `up` runner (broker, orchestrator,
default or demo pool, demo batch and its summary).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from orchestrator.inspect import entry_time, is_time_field, iso_time
from shared.client import PoolManager, make_pool_spec, make_task
from shared.config import Settings
from shared.errors import (
    BrokerError,
    InvalidRequest,
    MahavishnuError,
    PoolUnavailable,
    ResultTimeout,
)
from shared.models import PoolInfo, TaskResult, TaskSpec, new_id
from shared.state import ACCEPTING_STATUSES

T = TypeVar("T")
log = logging.getLogger("mahavishnu.cli")

STATUS_STYLE = {
    "running": "green",
    "completed": "green",
    "starting": "yellow",
    "scaling": "yellow",
    "degraded": "yellow",
    "queued": "cyan",
    "pending": "cyan",
    "retrying": "yellow",
    "closing": "magenta",
    "closed": "dim",
    "cancelled": "magenta",
    "failed": "red",
    "dead_lettered": "red",
}


def _width(stream: Any) -> int | None:
    """None (rich measures) on a terminal or with COLUMNS set; else wide, so pipes keep lines."""
    isatty = getattr(stream, "isatty", None)
    return None if (callable(isatty) and isatty()) or "COLUMNS" in os.environ else 200


def stdout_console() -> Console:
    """A console on stdout (created per use, so test runners that swap sys.stdout see it)."""
    return Console(file=sys.stdout, highlight=False, width=_width(sys.stdout))


def stderr_console() -> Console:
    """A console on stderr for progress, status lines and messages around `--json` output."""
    return Console(file=sys.stderr, highlight=False, width=_width(sys.stderr))


def mask_secrets(message: str, url: str) -> str:
    """The message with the password of the Redis `url` (plain or %-encoded) as `***`."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    for secret in {password, unquote(password or "")} - {None, ""}:
        message = message.replace(str(secret), "***")
    return message


def emit_json(document: Any) -> None:
    """Write one JSON document to stdout (nothing else goes there under `--json`)."""
    sys.stdout.write(json.dumps(document, indent=2, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def styled(status: str) -> Text:
    """A status word in its colour."""
    return Text(status, style=STATUS_STYLE.get(status, ""))


def as_text(value: Any) -> str:
    """A value for a table cell or stdout: strings as they are, everything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def pool_document(info: PoolInfo) -> dict[str, Any]:
    """A pool as a JSON-ready dict (spec, status, target, load, detail, created time)."""
    return info.model_dump(mode="json")


def pools_table(pools: Sequence[PoolInfo], *, title: str = "pools") -> Table:
    """One row per pool: identity, status, workers, load and counters."""
    table = Table(title=title, title_justify="left")
    for column in ("id", "name", "type", "status", "workers"):
        table.add_column(column, no_wrap=column == "id")
    for column in ("in_flight", "queued", "completed", "failed", "avg_ms"):
        table.add_column(column, justify="right")
    table.add_column("labels")
    for info in pools:
        load = info.load
        table.add_row(
            info.spec.id,
            info.spec.name,
            f"{info.spec.pool_type}/{info.spec.worker_type}",
            styled(str(info.status)),
            f"{load.workers}/{info.target_workers}",
            str(load.in_flight),
            str(load.queued),
            str(load.completed),
            str(load.failed),
            f"{load.avg_ms:.1f}",
            _labels(info.spec.labels),
        )
    return table


def monitor_view(pools: Sequence[PoolInfo], health: Mapping[str, Any] | None) -> RenderableType:
    """The `pool monitor` view: the pools table, plus a pool's workers when one is watched."""
    title = f"pools at {time.strftime('%H:%M:%S')}"
    if not pools:
        return Text(f"{title}: no live pools")
    parts: list[RenderableType] = [pools_table(pools, title=title)]
    failing = [p for p in pools if p.detail and str(p.status) in ("failed", "degraded")]
    parts.extend(Text(f"{p.spec.id}: {p.detail}", style="yellow") for p in failing)
    if health is not None:
        for pool_id, report in health.get("pools", {}).items():
            if any(p.spec.id == pool_id for p in pools):
                parts.append(workers_table(pool_id, report.get("workers", {})))
    return Group(*parts)


def workers_table(pool_id: str, workers: Mapping[str, Mapping[str, Any]]) -> Table:
    """One row per live worker of a pool, from its heartbeat."""
    table = Table(title=f"workers of {pool_id}", title_justify="left")
    for column in ("worker", "status", "in_flight", "last_seen_s", "host", "pid"):
        table.add_column(column, justify="right" if column in ("in_flight", "pid") else "left")
    for worker_id, beat in sorted(workers.items()):
        table.add_row(
            worker_id,
            styled(str(beat.get("status", ""))),
            str(beat.get("in_flight", "")),
            str(beat.get("last_seen_s", "")),
            str(beat.get("host", "")),
            str(beat.get("pid", "")),
        )
    return table


def health_view(report: Mapping[str, Any]) -> RenderableType:
    """The `pool health` view: overall verdict, broker, orchestrators and per-pool health."""
    healthy = bool(report.get("healthy"))
    verdict = Text("healthy" if healthy else "unhealthy", style="green" if healthy else "red")
    broker = report.get("broker", {})
    if broker.get("ok"):
        broker_line = f"broker {broker.get('url')} (redis {broker.get('version')})"
    else:
        broker_line = f"broker {broker.get('url')} unreachable: {broker.get('error')}"
    orchestrators = report.get("orchestrators", [])
    now = time.time()
    names = []
    for beat in orchestrators:
        try:
            age = f"{now - float(beat.get('last_seen', now)):.1f}s ago"
        except ValueError:
            age = "?"
        names.append(f"{beat.get('id')} (pid {beat.get('pid')} on {beat.get('host')}, {age})")
    orch_line = "orchestrators: " + (", ".join(names) if names else "none running")
    table = Table(title="pools", title_justify="left")
    for column in ("id", "name", "status", "healthy", "live/target", "detail"):
        table.add_column(column)
    for pool_id, pool in sorted(report.get("pools", {}).items()):
        ok = bool(pool.get("healthy"))
        table.add_row(
            pool_id,
            str(pool.get("name", "")),
            styled(str(pool.get("status", ""))),
            Text("yes" if ok else "no", style="green" if ok else "red"),
            f"{pool.get('live_workers', 0)}/{pool.get('target_workers', 0)}",
            str(pool.get("detail", "")),
        )
    return Group(Text.assemble("health: ", verdict), Text(broker_line), Text(orch_line), table)


def result_line(result: TaskResult) -> Text:
    """A one-line summary of a task result (for stderr, next to its output on stdout)."""
    status = str(result.status)
    mark = "✓" if result.ok else "✗"
    parts = [f"{mark} {result.task_id} {status}"]
    if result.duration:
        parts.append(f"in {result.duration * 1000:.1f} ms")
    if result.pool_id:
        parts.append(f"on pool {result.pool_id}")
    if result.worker_id:
        parts.append(f"worker {result.worker_id}")
    parts.append(f"attempt(s) {result.attempts}")
    if result.exit_code is not None:
        parts.append(f"exit code {result.exit_code}")
    line = " · ".join(parts)
    if result.error:
        line += f": {result.error}"
    return Text(line, style=STATUS_STYLE.get(status, ""))


def task_table(result: TaskResult) -> Table:
    """Every field of a task's state or result, times as ISO."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in result.model_dump(mode="json").items():
        if value is None or value == "":
            continue
        if name == "status":
            table.add_row(name, styled(str(value)))
            continue
        shown = as_text(value)
        if is_time_field(name) and isinstance(value, int | float) and value:
            shown = f"{iso_time(float(value))} ({value})"
        table.add_row(name, Text(shown))
    return table


def _cell(name: str, value: Any) -> Text:
    shown = as_text(value)
    if is_time_field(name) and isinstance(value, str):
        with contextlib.suppress(ValueError, OverflowError, OSError):
            shown = f"{value} ({iso_time(float(value))})"
    return Text(shown)


def inspect_view(doc: Mapping[str, Any]) -> RenderableType:
    """The `inspect` view of a decoded key (see `orchestrator.inspect.inspect_key`)."""
    ttl = doc.get("ttl_s")
    head = f"[bold]{escape(str(doc['key']))}[/]  {doc['type']}"
    if doc.get("kind"):
        head += f", {doc['kind']}"
    head += f", ttl {ttl:g}s" if ttl is not None else ", no ttl"
    parts: list[RenderableType] = [Text.from_markup(head)]
    kind = doc["type"]
    if kind == "hash":
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for name, value in doc["fields"].items():
            table.add_row(name, _cell(name, value))
        parts.append(table)
    elif kind == "stream":
        shown = len(doc["entries"])
        parts.append(Text(f"{doc['length']} entries, showing {shown}"))
        for group in doc["groups"]:
            parts.append(
                Text(
                    f"group {group['name']}: {group['consumers']} consumer(s), "
                    f"{group['pending']} pending, lag {group['lag']}, "
                    f"last delivered {group['last_delivered_id']}",
                    style="dim",
                )
            )
        for entry in doc["entries"]:
            parts.append(Text(f"{entry['id']}  {entry_time(entry['id']) or ''}", style="bold"))
            parts.append(Text(as_text(entry["fields"])))
    elif kind == "zset":
        parts.append(Text(f"{doc['size']} members, showing {len(doc['members'])}"))
        table = Table("score", "time", "member")
        for item in doc["members"]:
            table.add_row(str(item["score"]), item["time"] or "", Text(as_text(item["member"])))
        parts.append(table)
    elif kind in ("set", "list"):
        items = doc.get("members", doc.get("items", []))
        parts.append(Text(f"{doc['size']} {'members' if kind == 'set' else 'items'}"))
        parts.extend(Text(as_text(i)) for i in items)
    else:
        parts.append(Text(as_text(doc.get("value"))))
    return Group(*parts)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value at `fraction` (0..1) of the sorted values (nearest rank); 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def demo_table(summary: Mapping[str, Any]) -> Table:
    """The `up --demo` summary: counts, throughput and latency."""
    table = Table(title="demo summary", title_justify="left", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    latency = summary["latency_ms"]
    rows = [
        ("tasks", str(summary["tasks"])),
        ("completed", str(summary["completed"])),
        ("failed", str(summary["failed"])),
        ("dead-lettered", str(summary["dead_lettered"])),
        ("cancelled", str(summary["cancelled"])),
        ("not finished in time", str(summary["timed_out"])),
        ("elapsed", f"{summary['elapsed_s']:.2f} s"),
        ("throughput", f"{summary['throughput_per_s']:.1f} tasks/s"),
        ("latency p50", f"{latency['p50']:.1f} ms"),
        ("latency p99", f"{latency['p99']:.1f} ms"),
        ("latency max", f"{latency['max']:.1f} ms"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


# ---------------------------------------------------------------------------------- options


def pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    """`NAME=VALUE` options as a dict; InvalidRequest naming the flag for a malformed one."""
    found: dict[str, str] = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InvalidRequest(f"{flag} {item!r}: expected NAME=VALUE")
        found[name.strip()] = value
    return found


def json_value(raw: str) -> Any:
    """An `--arg` value: JSON when it parses (`3`, `[1, 2]`, `"x"`), else the bare string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def build_task(
    settings: Settings,
    *,
    prompt: str | None,
    call: str | None,
    args: list[str] | None,
    kwargs: list[str] | None,
    command: bool,
    argv: list[str] | None,
    timeout: float | None,
    max_attempts: int | None,
    **extra: Any,
) -> TaskSpec:
    """A validated task from the payload options; InvalidRequest names the wrong option."""
    if argv and not command:
        raise InvalidRequest(f"unexpected arguments {argv!r}: put --command before a program")
    given = [n for n, v in (("--prompt", prompt), ("--call", call), ("--command", command)) if v]
    if len(given) != 1:
        got = f"; got {' and '.join(given)}" if given else ""
        raise InvalidRequest(f"a task needs exactly one of --prompt, --call or --command{got}")
    if (args or kwargs) and not call:
        raise InvalidRequest("--arg and --kwarg go with --call")
    if command and not argv:
        raise InvalidRequest("--command needs the program to run and its arguments")
    data: dict[str, Any] = {k: v for k, v in extra.items() if v not in (None, [], {})}
    if prompt is not None:
        data["prompt"] = prompt
    elif call is not None:
        data["call"] = call
        data["args"] = [json_value(a) for a in args or []]
        data["kwargs"] = {k: json_value(v) for k, v in pairs(kwargs, "--kwarg").items()}
    else:
        data["command"] = list(argv or [])
    data["timeout"] = timeout if timeout is not None else settings.task_default_timeout
    data["max_attempts"] = max_attempts if max_attempts is not None else settings.task_max_attempts
    return make_task(data)


def wait_bound(settings: Settings, task: TaskSpec, *, routed: bool) -> float:
    """How long to wait for a task's result: every attempt, grace, and routing time."""
    bound = task.timeout * task.max_attempts + settings.task_deadline_grace
    return bound + (task.queue_timeout if routed else 0.0)


def show_result(result: TaskResult, json_out: bool) -> None:
    """Print a task result (output on stdout, a summary on stderr); exit 1 unless completed."""
    if json_out:
        emit_json(result.model_dump(mode="json"))
    else:
        if result.output is not None:
            sys.stdout.write(as_text(result.output).rstrip("\n") + "\n")
            sys.stdout.flush()
        stderr_console().print(result_line(result), soft_wrap=True)
    if not result.ok:
        raise typer.Exit(1)


def stop_event() -> asyncio.Event:
    """An event that SIGINT and SIGTERM set (instead of raising KeyboardInterrupt)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


# ---------------------------------------------------------------------------------- monitor


async def monitor(
    settings: Settings, pool_id: str | None, *, watch: bool, interval: float, json_out: bool
) -> None:
    """`pool monitor`: one snapshot (table or JSON), or a live table until Ctrl-C."""
    async with PoolManager(settings) as pools:

        async def snapshot() -> tuple[list[PoolInfo], dict[str, Any] | None]:
            found = [await pools.get_pool(pool_id)] if pool_id else await pools.list_pools()
            return found, (await pools.health_check() if pool_id else None)

        found, health = await snapshot()
        if json_out:
            doc: dict[str, Any] = {p.spec.id: p.load.model_dump() for p in found}
            if health is not None and pool_id:
                doc[pool_id]["workers_detail"] = health["pools"].get(pool_id, {}).get("workers")
            emit_json(doc)
            return
        if not watch:
            stdout_console().print(monitor_view(found, health))
            return
        stop = stop_event()
        with Live(monitor_view(found, health), console=stdout_console()) as live:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
                if not stop.is_set():
                    live.update(monitor_view(*await snapshot()))


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
    specs = [make_task(data) for data, _ in planned]
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
    from orchestrator.orchestrator import Orchestrator
    from shared.broker import ensure_broker

    info = stderr_console() if json_out else stdout_console()
    stop = stop_event()
    broker = await ensure_broker(settings)
    where: dict[str, Any] = {"redis_url": settings.redis_url_redacted}
    where["broker"] = f"embedded redis-server pid {broker.pid}" if broker else "already running"
    if broker:
        where["broker_data"] = str(broker.data_dir)
    where["key_prefix"] = settings.key_prefix
    try:
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
