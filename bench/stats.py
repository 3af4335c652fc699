"""Figures and the measuring tools: percentiles, process CPU and peak RSS, Redis CPU and memory.

CPU time is read per process (`/proc/<pid>/stat`, or psutil elsewhere) and for Redis from
`INFO cpu`, so a figure can say which process a task's time went to: on a 2-core machine the
process that is busy for the whole run is what bounds the throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from shared.config import load_settings
from shared.connection import connect, is_cluster_url

try:  # psutil is optional: /proc is read directly on Linux
    import psutil  # type: ignore[import-untyped,unused-ignore]
except ImportError:  # pragma: no cover - psutil comes with the dev tools
    psutil = None

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class Figure:
    """One measured figure: a scenario, a system and setup, its values, and how it went.

    `primary` is the value shown first (tasks/s for throughput, p50 ms for latency, ...);
    `baseline` names the figure it is compared with (the raw ceiling of the same shape).
    """

    key: str
    scenario: str
    system: str
    setup: str
    primary: float = 0.0
    unit: str = ""
    values: dict[str, float] = field(default_factory=dict)
    baseline: str | None = None
    status: str = "ok"
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the figure was measured."""
        return self.status == "ok"

    def as_json(self) -> dict[str, Any]:
        """The figure as a JSON-ready dict."""
        return {
            "key": self.key,
            "scenario": self.scenario,
            "system": self.system,
            "setup": self.setup,
            "primary": self.primary,
            "unit": self.unit,
            "values": self.values,
            "baseline": self.baseline,
            "status": self.status,
            "reason": self.reason,
            "notes": self.notes,
        }


def unavailable(key: str, scenario: str, system: str, setup: str, reason: str) -> Figure:
    """A figure that could not be measured, with the reason."""
    return Figure(key, scenario, system, setup, status="unavailable", reason=reason)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_values(samples_s: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99, max and mean of round-trip times (given in seconds), in ms."""
    ms = [s * 1000.0 for s in samples_s]
    return {
        "round_trips": float(len(ms)),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else 0.0,
        "mean_ms": sum(ms) / len(ms) if ms else 0.0,
    }


# ------------------------------------------------------------------ one scenario's figure
# Every system reports a scenario alike (its primary value, unit and first values), so that the
# figures of one scenario can stand side by side.


def throughput_figure(
    key: str,
    system: str,
    setup: str,
    n: int,
    seconds: float,
    values: Mapping[str, float],
    *,
    scenario: str = "throughput",
) -> Figure:
    """`n` tasks done in `seconds`: tasks/s, and `values` after the count, time and rate."""
    return Figure(
        key=key,
        scenario=scenario,
        system=system,
        setup=setup,
        primary=n / seconds,
        unit="tasks/s",
        values={"tasks": float(n), "seconds": seconds, "tasks_per_s": n / seconds, **values},
    )


def latency_figure(system: str, setup: str, samples_s: Sequence[float]) -> Figure:
    """Sequential round trips (in seconds each): their p50 first."""
    values = latency_values(samples_s)
    return Figure(
        key=f"latency/{system}",
        scenario="latency",
        system=system,
        setup=setup,
        primary=values["p50_ms"],
        unit="ms p50",
        values=values,
    )


def concurrency_figure(
    system: str,
    setup: str,
    samples_s: Sequence[float],
    *,
    clients: int,
    rounds: int,
    seconds: float,
    spent: Mapping[str, float],
) -> Figure:
    """`clients` clients doing `rounds` round trips each in `seconds`: round trips/s first."""
    total = clients * rounds
    values = latency_values(samples_s)
    values.update(
        {"clients": float(clients), "seconds": seconds, "round_trips_per_s": total / seconds}
    )
    values.update(cpu_values(spent, total, seconds))
    return Figure(
        key=f"concurrency/{system}",
        scenario="concurrency",
        system=system,
        setup=setup,
        primary=total / seconds,
        unit="round trips/s",
        values=values,
    )


def backlog_figure(system: str, setup: str, values: dict[str, float]) -> Figure:
    """A backlog queued with no consumer, then drained: its drain rate first."""
    return Figure(
        key=f"backlog/{system}",
        scenario="backlog",
        system=system,
        setup=setup,
        primary=values["drain_tasks_per_s"],
        unit="tasks/s drain",
        values=values,
    )


# ------------------------------------------------------------------------------ processes


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0.0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode()
        # the command name is in parentheses and may hold spaces: split after the last ')'
        fields = raw[raw.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        pass
    if psutil is not None:
        with contextlib.suppress(Exception):
            times = psutil.Process(pid).cpu_times()
            return float(times.user + times.system)
    return 0.0


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size of a process (VmHWM) in MiB; current RSS if no peak is known."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    if psutil is not None:
        with contextlib.suppress(Exception):
            return float(psutil.Process(pid).memory_info().rss) / (1024.0 * 1024.0)
    return 0.0


def self_cpu_seconds() -> float:
    """CPU seconds of this process (the client side of every figure)."""
    return time.process_time()


@dataclass
class CpuMeter:
    """CPU seconds spent by named groups of processes (and Redis) between start and stop."""

    groups: dict[str, list[int]]
    redis: Any = None
    _start: dict[str, float] = field(default_factory=dict)
    _elapsed: dict[str, float] = field(default_factory=dict)

    async def start(self) -> None:
        """Take the first reading."""
        self._start = await self._read()

    async def stop(self) -> dict[str, float]:
        """CPU seconds per group since `start`."""
        end = await self._read()
        self._elapsed = {k: max(0.0, end[k] - self._start.get(k, 0.0)) for k in end}
        return dict(self._elapsed)

    async def _read(self) -> dict[str, float]:
        reading = {"client": self_cpu_seconds()}
        for name, pids in self.groups.items():
            reading[name] = sum(cpu_seconds(p) for p in pids)
        if self.redis is not None:
            reading["redis"] = await redis_cpu_seconds(self.redis)
        return reading


def cpu_values(spent: Mapping[str, float], tasks: int, seconds: float) -> dict[str, float]:
    """Per process group: microseconds of CPU per task and the share of one core it used."""
    values: dict[str, float] = {}
    for name, cpu in spent.items():
        values[f"cpu_us_per_task.{name}"] = cpu / tasks * 1e6 if tasks else 0.0
        values[f"core_share.{name}"] = cpu / seconds if seconds > 0 else 0.0
    return values


async def start_process(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log_path: Path | None = None,
    stdout_pipe: bool = False,
) -> asyncio.subprocess.Process:
    """Start a child in its own session; its output goes to `log_path` (or a pipe)."""
    out: Any = asyncio.subprocess.DEVNULL
    handle = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        handle = log_path.open("ab")
        out = handle
    try:
        return await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if stdout_pipe else out,
            stderr=out,
            env=dict(env) if env is not None else None,
            cwd=str(cwd) if cwd is not None else None,
            start_new_session=True,
        )
    finally:
        if handle is not None:
            handle.close()


async def wait_for_line(
    proc: asyncio.subprocess.Process, expected: str, timeout: float, what: str
) -> None:
    """Read the child's stdout until a line equal to `expected`; raise with the reason if not."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"{what} did not report {expected!r} within {timeout:g}s")
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), left)
        except TimeoutError:
            continue
        if not line:
            code = await proc.wait()
            raise RuntimeError(f"{what} exited (code {code}) before reporting {expected!r}")
        if line.decode(errors="replace").strip() == expected:
            return


async def stop_process(proc: asyncio.subprocess.Process, grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL of its process group after `grace` seconds."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5.0)


def kill_pids(pids: Iterable[int]) -> None:
    """SIGKILL processes this harness started that are still alive (a last resort)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (and is not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode()
        return raw[raw.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


# ---------------------------------------------------------------------------------- Redis


def client(url: str, *, blocking: bool = False) -> Any:
    """A plain redis-py asyncio client (bytes replies, RESP2, hiredis when installed); a
    cluster client (the project's) for a `redis+cluster://` URL."""
    if is_cluster_url(url):
        settings = load_settings(redis_url=url, key_prefix="bench:", redis_command_timeout=30.0)
        return connect(settings, blocking=blocking)
    return aioredis.Redis.from_url(
        url,
        protocol=2,
        decode_responses=False,
        socket_timeout=None if blocking else 30.0,
        socket_connect_timeout=5.0,
        max_connections=2000,
    )


async def redis_cpu_seconds(redis: Any) -> float:
    """CPU seconds the Redis server (every primary of a cluster) has used so far."""
    if isinstance(redis, RedisCluster):
        infos = await redis.info("cpu", target_nodes=RedisCluster.PRIMARIES)
        nodes = list(infos.values()) if isinstance(infos, dict) else [infos]
        if nodes and not isinstance(nodes[0], dict):  # one node answered for all
            nodes = [infos]
    else:
        nodes = [await redis.info("cpu")]
    return sum(
        float(info.get("used_cpu_user", 0.0)) + float(info.get("used_cpu_sys", 0.0))
        for info in nodes
    )


async def redis_used_memory(redis: Any) -> int:
    """INFO memory `used_memory` in bytes."""
    info = await redis.info("memory")
    return int(info.get("used_memory", 0))


async def delete_prefix(redis: Any, prefix: str) -> int:
    """UNLINK every key under `prefix`; return how many."""
    removed = 0
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=f"{prefix}*", count=2000):
        batch.append(key)
        if len(batch) >= 1000:
            removed += int(await redis.unlink(*batch))
            batch = []
    if batch:
        removed += int(await redis.unlink(*batch))
    return removed


class Stopwatch:
    """perf_counter based timing: `lap()` returns seconds since the last lap (or start)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self._last = self.start

    def lap(self) -> float:
        """Seconds since the previous lap."""
        now = time.perf_counter()
        elapsed = now - self._last
        self._last = now
        return elapsed

    @property
    def elapsed(self) -> float:
        """Seconds since the stopwatch started."""
        return time.perf_counter() - self.start


def drain_values(marks: Sequence[tuple[int, float]], total: int) -> dict[str, float]:
    """Drain rate of a backlog from reply arrival marks (cumulative count, perf_counter time).

    `drain_tasks_per_s` counts from the first reply to the last; `first_fifth_per_s` and
    `last_fifth_per_s` are the rates while the first and the last 20% of the backlog drained,
    so a per-task cost that grows with the queue's length shows as a ratio below 1.
    """
    if len(marks) < 2:
        return {"drain_tasks_per_s": 0.0}
    first_count, first_time = marks[0]
    last_count, last_time = marks[-1]
    span = last_time - first_time
    values = {
        "drain_seconds": span,
        "drain_tasks_per_s": (last_count - first_count) / span if span > 0 else 0.0,
    }
    head = _segment_rate(marks, 0, total // 5)
    tail = _segment_rate(marks, total - total // 5, total)
    if head and tail:
        values["first_fifth_per_s"] = head
        values["last_fifth_per_s"] = tail
        values["flatness"] = tail / head
    return values


def _segment_rate(marks: Sequence[tuple[int, float]], low: int, high: int) -> float:
    """Tasks/s between the marks where the count first reached `low` and `high`."""
    start = next(((c, t) for c, t in marks if c >= max(low, marks[0][0])), None)
    end = next(((c, t) for c, t in marks if c >= high), None)
    if start is None or end is None or end[1] <= start[1]:
        return 0.0
    return (end[0] - start[0]) / (end[1] - start[1])
