"""`mahavishnu top`: a live view of the pools (rich Live), or one snapshot with `--once`.

mahavishnu top                 refresh every second until Ctrl-C
mahavishnu top --once          one snapshot as tables
mahavishnu top --once --json   one snapshot as JSON (what top_data.snapshot returns)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from orchestrator.cli import render
from orchestrator.cli.top_data import snapshot
from shared.client import PoolManager
from shared.config import Settings


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _age(seconds: float) -> Text:
    style = "green" if seconds < 2 else "yellow" if seconds < 5 else "red"
    return Text(f"{seconds:.1f}s", style=style)


def top_view(doc: dict[str, Any]) -> Group:
    """The pools table, the workers table and a summary line of one snapshot."""
    window = f"{doc['window_s']:g}s"
    pools = Table(title=f"pools (rates and latency over the last {window})", expand=False)
    for column in ("pool", "status", "workers", "queued", "running", "done", "failed"):
        pools.add_column(column, justify="left" if column in ("pool", "status") else "right")
    for column in ("/s", "p50 ms", "p99 ms"):
        pools.add_column(column, justify="right")
    pools.add_column("p50 / p99 over time", no_wrap=True)
    for p in doc["pools"]:
        pools.add_row(
            f"{p['name']} [dim]{p['pool_id']}[/]",
            render.styled(p["status"]),
            f"{p['workers']}/{p['target_workers']}",
            str(p["queued"]),
            str(p["in_flight"]),
            str(p["completed"]),
            str(p["failed"]),
            f"{p['rate_per_s']:.1f}",
            _ms(p["p50_ms"]),
            _ms(p["p99_ms"]),
            Text(f"{p['p50_spark']}\n{p['p99_spark']}", style="cyan"),
        )
    workers = Table(title="workers")
    for column in ("worker", "pool", "kind", "status", "running", "done", "heartbeat", "host"):
        workers.add_column(column)
    for w in doc["workers"]:
        workers.add_row(
            w["worker_id"], w["pool_id"], w["kind"], w["status"], str(w["in_flight"]),
            str(w["completed"]), _age(w["heartbeat_age_s"]), w["host"],
        )  # fmt: skip
    lag = doc["memory_sync_lag_s"]
    dead = doc["dead_letters"]
    summary = Text.assemble(
        ("dead letters ", "bold"),
        (str(dead), "red" if dead else "green"),
        ("   orchestrators ", "bold"),
        (str(doc["orchestrators"]), "green" if doc["orchestrators"] else "red"),
        ("   memory-sync lag ", "bold"),
        "n/a" if lag is None else f"{lag:.1f}s",
        ("   at ", "dim"),
        (time.strftime("%H:%M:%S", time.localtime(doc["at"])), "dim"),
    )
    if not doc["pools"]:
        return Group(Text("no pools; start one with `mahavishnu pool spawn`"), summary)
    return Group(pools, workers, summary)


async def run_top(settings: Settings, *, interval: float, once: bool, json_out: bool) -> None:
    """One snapshot (`once`), or a live view refreshed every `interval` s until Ctrl-C."""
    from rich.live import Live

    from orchestrator.cli.up import stop_event

    async with PoolManager(settings) as pools:
        doc = await snapshot(pools)
        if json_out:
            render.emit_json(doc)
            return
        if once:
            render.stdout_console().print(top_view(doc))
            return
        stop = stop_event()
        with Live(top_view(doc), console=render.stdout_console(), screen=False) as live:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
                if not stop.is_set():
                    live.update(top_view(await snapshot(pools)))
