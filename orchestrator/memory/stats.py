"""Memory statistics for `pool monitor` and the MCP `pool_monitor`: per pool its records and
bytes, and per destination what was synced, what is pending, how old the oldest unsynced record
is, the last success and the last error.

Pending = entries delivered and not acknowledged (`XPENDING`) plus entries not yet delivered
(after the group's last-delivered id). Read-only: it never creates a group; a pool the
aggregator has not reached yet counts all its records as pending.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.exceptions import ResponseError

from orchestrator.memory.watermark import group_name
from shared.config import Settings
from shared.connection import Redis, decode_hash, text


@dataclass
class DestinationStats:
    """One destination, for one pool or summed over pools."""

    synced: int = 0
    pending: int = 0
    lost: int = 0  # trimmed from the stream before this destination took them
    skipped: int = 0  # copies of shared results (their own pool's record is synced)
    lag_s: float = 0.0  # age of the oldest record not yet synced (0 when none)
    last_success: float | None = None
    last_error: str = ""
    last_error_at: float | None = None

    def add(self, other: DestinationStats) -> None:
        self.synced += other.synced
        self.pending += other.pending
        self.lost += other.lost
        self.skipped += other.skipped
        self.lag_s = max(self.lag_s, other.lag_s)
        if other.last_success and (self.last_success or 0) < other.last_success:
            self.last_success = other.last_success


@dataclass
class PoolMemoryStats:
    """A pool's memory stream and its sync state per destination."""

    pool_id: str
    records: int
    bytes: int
    last_sync: float | None
    destinations: dict[str, DestinationStats] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _id_ms(entry_id: str) -> float:
    try:
        return int(entry_id.split("-", 1)[0]) / 1000.0
    except ValueError:
        return 0.0


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return 0, 0


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


async def _groups(redis: Redis, key: str) -> dict[str, dict[str, Any]]:
    try:
        reply = await redis.xinfo_groups(key)
    except ResponseError:  # no such stream
        return {}
    groups: dict[str, dict[str, Any]] = {}
    for group in reply:
        info = {text(k): v for k, v in group.items()}
        groups[text(info.get("name"))] = info
    return groups


async def pool_memory_stats(
    redis: Redis, settings: Settings, pool_id: str, destinations: Iterable[str]
) -> PoolMemoryStats:
    """Records, bytes, and per destination synced / pending / lag of one pool."""
    keys = settings.keys
    key = keys.pool_memory(pool_id)
    pipe = redis.pipeline(transaction=False)
    pipe.xlen(key)
    pipe.memory_usage(key)
    pipe.hgetall(keys.pool_memory_sync(pool_id))
    pipe.xrange(key, count=1)
    length, size, counters_raw, first = await pipe.execute()
    counters = decode_hash(counters_raw or {})
    first_id = text(first[0][0]) if first else ""
    groups = await _groups(redis, key) if length else {}
    now = time.time()
    stats = PoolMemoryStats(pool_id, int(length or 0), int(size or 0), None)
    for dest in destinations:
        d = DestinationStats(
            synced=int(counters.get(f"{dest}:synced", 0) or 0),
            lost=int(counters.get(f"{dest}:lost", 0) or 0),
            skipped=int(counters.get(f"{dest}:skipped", 0) or 0),
            last_success=_number(counters.get(f"{dest}:last_success")),
        )
        group = groups.get(group_name(dest))
        oldest = ""
        if group is None:
            d.pending, oldest = stats.records, first_id
        else:
            last = text(group.get("last-delivered-id"))
            delivered_pending = int(group.get("pending") or 0)
            lag = group.get("lag")
            if first_id and _id_key(last) < _id_key(first_id):
                undelivered = stats.records  # everything left comes after a trimmed gap
            else:
                undelivered = int(lag) if lag is not None else 0
            d.pending = delivered_pending + undelivered
            if delivered_pending:
                summary = await redis.xpending(key, group_name(dest))
                low = summary.get("min") if isinstance(summary, dict) else None
                oldest = text(low)
            elif undelivered:
                after = await redis.xrange(key, min=f"({last}", count=1)
                oldest = text(after[0][0]) if after else ""
        d.lag_s = round(max(0.0, now - _id_ms(oldest)), 3) if oldest and d.pending else 0.0
        stats.destinations[dest] = d
        if d.last_success and (stats.last_sync or 0) < d.last_success:
            stats.last_sync = d.last_success
    return stats


async def sync_overview(
    redis: Redis, settings: Settings, pool_stats: Iterable[PoolMemoryStats]
) -> dict[str, DestinationStats]:
    """Per destination: the pools' numbers summed (lag: the largest), plus the destination's
    last error (a service that cannot be reached belongs to no pool)."""
    status = decode_hash(await redis.hgetall(settings.keys.memory_sync_status) or {})
    totals: dict[str, DestinationStats] = {
        d: DestinationStats() for d in settings.memory_sync_destinations
    }
    for stats in pool_stats:
        for dest, numbers in stats.destinations.items():
            totals.setdefault(dest, DestinationStats()).add(numbers)
    for dest, total in totals.items():
        total.last_error = status.get(f"{dest}:last_error", "")
        total.last_error_at = _number(status.get(f"{dest}:last_error_at"))
    return totals


async def memory_report(
    redis: Redis, settings: Settings, pool_ids: Iterable[str]
) -> tuple[dict[str, DestinationStats], list[PoolMemoryStats]]:
    """Per destination totals and per pool statistics of `pool_ids`."""
    dests = settings.memory_sync_destinations
    pools = [await pool_memory_stats(redis, settings, p, dests) for p in pool_ids]
    return await sync_overview(redis, settings, pools), pools
