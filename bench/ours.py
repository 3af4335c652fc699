"""Mahavishnu pools under the same load: direct (to a named pool) and routed (orchestrator).

A `Cluster` is what a deployment runs: one orchestrator process (`python -m orchestrator
orchestrator`, the `mahavishnu orchestrator` command) whose pools' worker processes it starts
itself (`python -m worker --pool P --concurrency N`), and this process as the client
(`shared.client.PoolManager`). Each cluster has a key prefix of its own and is torn down (its
processes stopped, its keys deleted) when the `async with` ends. The task is the built-in no-op
of a `python` pool: `{"call": "noop"}`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from bench.raw import child_env
from bench.stats import (
    CpuMeter,
    Figure,
    Stopwatch,
    backlog_figure,
    client,
    concurrency_figure,
    cpu_values,
    delete_prefix,
    drain_values,
    kill_pids,
    latency_figure,
    peak_rss_mb,
    pid_alive,
    redis_used_memory,
    start_process,
    stop_process,
    throughput_figure,
)
from shared.client import PoolManager
from shared.config import SETTINGS_DIR_ENV, Settings, load_settings, settings_env
from shared.connection import decode_hash, text
from shared.models import PoolStatus, TaskResult, TaskStatus

NOOP: dict[str, Any] = {"call": "noop"}
MAX_QUEUE = 10_000_000
"""Pools of the bench take any backlog: `max_queue` would otherwise answer QueueFull."""


def bench_settings(url: str, prefix: str, workdir: Path, concurrency: int) -> Settings:
    """The defaults of every setting, on the bench's Redis under the cluster's prefix."""
    return load_settings(
        redis_url=url,
        key_prefix=prefix,
        embedded_broker=False,
        embedded_broker_dir=workdir / "redis",
        worker_concurrency=concurrency,
    )


class Cluster:
    """An orchestrator process, its pools' worker processes, and a client in this process."""

    def __init__(self, url: str, prefix: str, workdir: Path, *, concurrency: int) -> None:
        self.url = url
        self.prefix = prefix
        self.workdir = workdir
        self.concurrency = concurrency
        workdir.mkdir(parents=True, exist_ok=True)
        self.settings = bench_settings(url, prefix, workdir, concurrency)
        self.redis: Any = client(url)
        self.pm: PoolManager | None = None
        self.orchestrator: asyncio.subprocess.Process | None = None
        self.pool_ids: list[str] = []
        self._seen_pids: set[int] = set()

    @property
    def manager(self) -> PoolManager:
        """The client of the cluster."""
        assert self.pm is not None, "the cluster is not started"
        return self.pm

    def env(self) -> dict[str, str]:
        """The environment giving a child process exactly this cluster's settings."""
        env = child_env()
        env.update(settings_env(self.settings))
        env[SETTINGS_DIR_ENV] = str(self.workdir / "no-settings")
        return env

    async def __aenter__(self) -> Self:
        self.orchestrator = await start_process(
            [sys.executable, "-m", "orchestrator", "orchestrator", "--log-level", "WARNING"],
            env=self.env(),
            cwd=self.workdir,
            log_path=self.workdir / "orchestrator.log",
        )
        self.pm = PoolManager(self.settings)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.pm is not None:
                await self.pm.aclose()
            if self.orchestrator is not None:
                await stop_process(self.orchestrator, self.settings.drain_grace + 15)
            kill_pids(p for p in self._seen_pids if pid_alive(p))
            await delete_prefix(self.redis, self.prefix)
        finally:
            await self.redis.aclose()

    async def spawn(self, name: str, workers: int, *, max_workers: int | None = None) -> str:
        """Spawn a local `python` pool with `workers` worker processes; wait until they serve."""
        pool_id = await self.manager.spawn_pool(
            "local",
            name=name,
            min_workers=workers,
            max_workers=max(1, max_workers if max_workers is not None else workers),
            concurrency=self.concurrency,
            max_queue=MAX_QUEUE,
            timeout=90.0,
        )
        self.pool_ids.append(pool_id)
        await self.wait_workers(pool_id, workers)
        return pool_id

    async def live_workers(self, pool_id: str) -> dict[str, int]:
        """Worker id -> pid of the pool's workers with a live heartbeat."""
        keys = self.settings.keys
        members = sorted(text(m) for m in await self.redis.smembers(keys.pool_workers(pool_id)))
        pipe = self.redis.pipeline(transaction=False)
        for worker_id in members:
            pipe.hgetall(keys.worker(worker_id))
        found: dict[str, int] = {}
        for worker_id, raw in zip(members, await pipe.execute(), strict=True):
            beat = decode_hash(raw)
            if beat.get("pid", "").isdigit() and beat.get("status") == "running":
                found[worker_id] = int(beat["pid"])
        self._seen_pids.update(found.values())
        return found

    async def wait_workers(self, pool_id: str, n: int, timeout: float = 90.0) -> None:
        """Wait until the pool has exactly `n` live workers."""
        deadline = time.monotonic() + timeout
        while len(await self.live_workers(pool_id)) != n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"pool {pool_id} did not reach {n} live workers in {timeout}s")
            await asyncio.sleep(0.05)

    async def worker_pids(self, pool_ids: Sequence[str] | None = None) -> list[int]:
        """Pids of the live workers of these pools (default: every pool of the cluster)."""
        pids: list[int] = []
        for pool_id in pool_ids if pool_ids is not None else self.pool_ids:
            pids.extend((await self.live_workers(pool_id)).values())
        return pids

    async def meter(self) -> CpuMeter:
        """A CPU meter over the workers, the orchestrator and Redis."""
        orchestrator = [self.orchestrator.pid] if self.orchestrator is not None else []
        return CpuMeter(
            {"workers": await self.worker_pids(), "orchestrator": orchestrator}, redis=self.redis
        )

    async def rss(self) -> dict[str, float]:
        """Peak RSS (MiB) so far of the largest worker and of the orchestrator."""
        workers = await self.worker_pids()
        orchestrator = self.orchestrator.pid if self.orchestrator is not None else 0
        return {
            "rss_peak_mb.worker": max((peak_rss_mb(p) for p in workers), default=0.0),
            "rss_peak_mb.orchestrator": peak_rss_mb(orchestrator) if orchestrator else 0.0,
        }


def _check(results: Sequence[TaskResult]) -> None:
    bad = [r for r in results if r.status is not TaskStatus.COMPLETED]
    if bad:
        first = bad[0]
        raise RuntimeError(f"{len(bad)} task(s) did not complete; first: {first.status} {first}")


async def run_batches(
    pm: PoolManager, n: int, batch: int, pool_id: str | None, timeout: float
) -> None:
    """Submit `n` no-op tasks in batches of `batch` and wait for every result."""
    ids: list[str] = []
    for start in range(0, n, batch):
        ids.extend(await pm.submit_many([NOOP] * min(batch, n - start), pool_id=pool_id))
    results = await asyncio.wait_for(asyncio.gather(*(pm.result(i) for i in ids)), timeout)
    _check(results)


def _system(pool_id: str | None) -> str:
    return "direct" if pool_id is not None else "routed"


async def throughput(
    cluster: Cluster,
    *,
    key: str,
    setup: str,
    n: int,
    batch: int,
    warmup: int,
    timeout: float,
    pool_id: str | None,
    scenario: str = "throughput",
) -> Figure:
    """Tasks/s from the first submit to the last result, workers already running."""
    pm = cluster.manager
    await run_batches(pm, warmup, batch, pool_id, timeout)
    meter = await cluster.meter()
    await meter.start()
    clock = Stopwatch()
    await run_batches(pm, n, batch, pool_id, timeout)
    seconds = clock.elapsed
    spent = await meter.stop()
    values = {**cpu_values(spent, n, seconds), **await cluster.rss()}
    return throughput_figure(key, _system(pool_id), setup, n, seconds, values, scenario=scenario)


async def latency(
    cluster: Cluster, *, n: int, warmup: int, pool_id: str | None, setup: str
) -> Figure:
    """Sequential round trips from one client (execute_on_pool or route_task)."""
    pm = cluster.manager
    samples: list[float] = []
    for i in range(warmup + n):
        began = time.perf_counter()
        if pool_id is not None:
            result = await pm.execute_on_pool(pool_id, NOOP, timeout=30.0)
        else:
            result = await pm.route_task(NOOP, timeout=30.0)
        if i >= warmup:
            samples.append(time.perf_counter() - began)
        _check([result])
    return latency_figure(_system(pool_id), setup, samples)


async def concurrency(
    cluster: Cluster, *, clients: int, rounds: int, pool_id: str | None, setup: str
) -> Figure:
    """`clients` PoolManagers in this process, each doing sequential round trips."""
    managers = [PoolManager(cluster.settings) for _ in range(clients)]
    samples: list[float] = []

    async def one(pm: PoolManager, count: int) -> None:
        for _ in range(count):
            began = time.perf_counter()
            if pool_id is not None:
                result = await pm.execute_on_pool(pool_id, NOOP, timeout=60.0)
            else:
                result = await pm.route_task(NOOP, timeout=60.0)
            samples.append(time.perf_counter() - began)
            _check([result])

    try:
        await asyncio.gather(*(one(pm, 1) for pm in managers))  # open every connection
        samples.clear()
        meter = await cluster.meter()
        await meter.start()
        clock = Stopwatch()
        await asyncio.gather(*(one(pm, rounds) for pm in managers))
        seconds = clock.elapsed
        spent = await meter.stop()
    finally:
        await asyncio.gather(*(pm.aclose() for pm in managers))
    return concurrency_figure(
        _system(pool_id),
        setup,
        samples,
        clients=clients,
        rounds=rounds,
        seconds=seconds,
        spent=spent,
    )


async def backlog(cluster: Cluster, *, n: int, batch: int, timeout: float) -> Figure:
    """Queue `n` tasks on a pool with no worker, measure Redis memory, then start one worker."""
    pm = cluster.manager
    pool_id = await cluster.spawn("backlog", 0, max_workers=1)
    before = await redis_used_memory(cluster.redis)
    clock = Stopwatch()
    ids: list[str] = []
    for start in range(0, n, batch):
        ids.extend(await pm.submit_many([NOOP] * min(batch, n - start), pool_id=pool_id))
    submit_seconds = clock.elapsed
    after = await redis_used_memory(cluster.redis)
    marks: list[tuple[int, float]] = []

    def arrived(_: object) -> None:
        marks.append((len(marks) + 1, time.perf_counter()))

    waits = [asyncio.ensure_future(pm.result(i)) for i in ids]
    for fut in waits:
        fut.add_done_callback(arrived)
    await pm.scale(pool_id, 1)
    await cluster.wait_workers(pool_id, 1)
    meter = await cluster.meter()
    await meter.start()
    results = await asyncio.wait_for(asyncio.gather(*waits), timeout)
    spent = await meter.stop()
    _check(results)
    values = drain_values(marks, n)
    values.update(
        {
            "tasks": float(n),
            "submit_tasks_per_s": n / submit_seconds,
            "redis_bytes_per_task": (after - before) / n,
        }
    )
    values.update(cpu_values(spent, n, values.get("drain_seconds", 0.0)))
    values.update(await cluster.rss())
    return backlog_figure("direct", f"{n:,} tasks queued, then 1 worker process", values)


async def add_idle_pools(cluster: Cluster, count: int, timeout: float = 180.0) -> None:
    """Spawn `count` pools without workers and wait until every pool of the cluster runs."""
    pm = cluster.manager
    names = [f"idle{i:03d}" for i in range(count)]
    ids = await asyncio.gather(
        *(
            pm.spawn_pool(
                "local",
                name=name,
                min_workers=0,
                max_workers=1,
                concurrency=cluster.concurrency,
                max_queue=MAX_QUEUE,
                wait=False,
            )
            for name in names
        )
    )
    cluster.pool_ids.extend(ids)
    # A pool without workers goes starting -> running -> degraded (no live worker); either of
    # the last two means the orchestrator has created and supervises it.
    settled = {PoolStatus.RUNNING, PoolStatus.DEGRADED}
    wanted = set(cluster.pool_ids)
    deadline = time.monotonic() + timeout
    while True:
        ready = {p.spec.id for p in await pm.list_pools() if p.status in settled}
        if wanted <= ready:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{len(wanted - ready)} of {len(wanted)} pools not supervised after {timeout}s"
            )
        await asyncio.sleep(0.25)
