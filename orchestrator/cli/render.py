"""How the `mahavishnu` commands show things and read their options.

Rich tables for people, one JSON document for `--json`, and tasks built from the payload
options. The long-running parts (`up`, the demo, the live monitor) are in `up.py`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import typer
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from orchestrator.cli.inspect import entry_time, is_time_field, iso_time
from shared.arq_options import ArqOptions
from shared.client import make_task
from shared.config import Settings, redact_url
from shared.errors import (
    InvalidRequest,
)
from shared.models import PoolInfo, PoolSpec, PoolType, TaskResult, TaskSpec, payload_problem

T = TypeVar("T")
log = logging.getLogger("mahavishnu.cli")

STATUS_STYLE = {
    "unsupervised": "yellow",
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
    document = info.model_dump(mode="json")
    document["shown_status"] = info.shown_status
    return document


def workers_cell(info: PoolInfo) -> str:
    """Serving workers against the target: "2/2", "2/2 local + 1 external", "+ 1 draining"."""
    load = info.load
    local = load.local_workers if load.local_workers or load.external_workers else load.workers
    cell = f"{local}/{info.target_workers}"
    if load.external_workers:
        cell += f" local + {load.external_workers} external"
    if load.draining:
        cell += f", {load.draining} draining"
    if load.stuck:
        cell += f" ({load.stuck} stuck)"
    return cell


def pool_kind(spec: PoolSpec) -> str:
    """The type cell of a pool: `local/python`; an arq pool's adds its queue and Redis."""
    kind = f"{spec.pool_type}/{spec.worker_type}"
    if spec.pool_type is PoolType.ARQ:
        kind += f"\n{ArqOptions.model_validate(spec.options).where}"
    return escape(kind)


def remote_cell(info: PoolInfo) -> str:
    """A delegated pool's remote and its health, on a line of its own ('' for other pools)."""
    remote = info.spec.remote
    if remote is None:
        return ""
    return f"\n{remote.kind} {redact_url(remote.url)} ({info.remote_health or 'not checked'})"


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
            pool_kind(info.spec) + escape(remote_cell(info)),
            styled(info.shown_status),
            workers_cell(info),
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
    unsupervised = [p for p in pools if p.shown_status == "unsupervised"]
    parts.extend(
        Text(f"{p.spec.id}: no orchestrator supervises it; start `mahavishnu orchestrator`")
        for p in unsupervised
    )
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
    for column in ("id", "name", "status", "healthy", "serving/target", "detail"):
        table.add_column(column)
    for pool_id, pool in sorted(report.get("pools", {}).items()):
        ok = bool(pool.get("healthy"))
        workers = f"{pool.get('serving', 0)}/{pool.get('target_workers', 0)}"
        for name in ("external", "draining", "stuck"):
            if pool.get(name):
                workers += f" +{pool[name]} {name}"
        detail = "; ".join(pool.get("problems") or []) or str(pool.get("detail", ""))
        if pool.get("last_restart_reason"):
            when = time.strftime("%H:%M:%S", time.localtime(pool.get("last_restart_at") or 0))
            detail += f" (last restart {when}: {pool['last_restart_reason']})"
        table.add_row(
            pool_id,
            str(pool.get("name", "")),
            styled(str(pool.get("status", ""))),
            Text("yes" if ok else "no", style="green" if ok else "red"),
            workers,
            detail,
        )
    lines: list[RenderableType] = [Text.assemble("health: ", verdict), Text(broker_line)]
    if broker.get("data_lost_at"):
        lost = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(broker["data_lost_at"]))
        lines.append(Text(f"Redis lost its data at {lost}: {broker.get('data_lost')}", "red"))
    return Group(*lines, Text(orch_line), table)


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
    """The `inspect` view of a decoded key (see `orchestrator.cli.inspect.inspect_key`)."""
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


def json_object(raw: str | None, flag: str) -> dict[str, Any] | None:
    """A JSON object option (None when not given); InvalidRequest naming the flag otherwise."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"{flag}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{flag}: expected a JSON object, got {type(value).__name__}")
    return value


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
    given = [n for n, v in (("--prompt", prompt), ("--command", command), ("--call", call)) if v]
    problem = payload_problem(given, ("--prompt", "--command", "--call"))
    if problem:
        raise InvalidRequest(problem)
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
    if timeout is not None:
        data["timeout"] = timeout
    if max_attempts is not None:
        data["max_attempts"] = max_attempts
    return make_task(data, settings=settings)


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
