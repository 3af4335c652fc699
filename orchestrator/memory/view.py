"""How `pool monitor` shows memory sync: one row per destination, one row per pool."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from orchestrator.memory.stats import DestinationStats, PoolMemoryStats


def _ago(at: float | None) -> str:
    if not at:
        return "never"
    return f"{max(0.0, time.time() - at):.0f}s ago"


def memory_json(
    overview: Mapping[str, DestinationStats], pools: Sequence[PoolMemoryStats]
) -> dict[str, Any]:
    """The `--json` form: per destination totals and per pool statistics."""
    return {
        "destinations": {name: vars(d) for name, d in overview.items()},
        "pools": {p.pool_id: p.as_dict() for p in pools},
    }


def memory_view(
    overview: Mapping[str, DestinationStats],
    pools: Sequence[PoolMemoryStats],
    *,
    enabled: bool,
) -> RenderableType:
    """The destinations table (synced, pending, lag, last success, last error) and the pools'
    memory table (records, bytes, synced/pending per destination, last sync)."""
    parts: list[RenderableType] = []
    title = "memory sync" + ("" if enabled else " (memory_aggregation_enabled is off)")
    dests = Table(title=title, title_justify="left")
    for column in ("destination", "synced", "pending", "lost", "lag_s", "last success"):
        dests.add_column(column, justify="left" if column == "destination" else "right")
    dests.add_column("last error", overflow="fold")
    for name, d in overview.items():
        error = f"{_ago(d.last_error_at)}: {d.last_error}" if d.last_error else ""
        dests.add_row(
            name,
            str(d.synced),
            str(d.pending),
            str(d.lost),
            f"{d.lag_s:.1f}",
            _ago(d.last_success),
            Text(error, style="yellow") if error else "",
        )
    parts.append(dests)
    if pools:
        table = Table(title="memory per pool", title_justify="left")
        names = list(overview)
        table.add_column("pool")
        for column in ("records", "bytes", *(f"{n} synced/pending" for n in names), "last sync"):
            table.add_column(column, justify="right")
        for p in pools:
            cells = [
                f"{p.destinations[n].synced}/{p.destinations[n].pending}"
                if n in p.destinations
                else "-"
                for n in names
            ]
            table.add_row(p.pool_id, str(p.records), str(p.bytes), *cells, _ago(p.last_sync))
        parts.append(table)
    return Group(*parts)
