"""One run of the harness: a private Redis, each system in turn, then the report.

The order is raw ceiling, arq, BullMQ, then the pools; each figure is measured under a key
prefix (or arq queue) of its own and its keys are deleted afterwards, so no figure sees
another's data. A figure that fails is reported with the reason and the run goes on.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from redis.asyncio.cluster import RedisCluster
from rich.console import Console
from rich.progress import Progress

from bench import mixed, ours, raw
from bench.arq_section import arq_section
from bench.bullmq_section import bullmq_section
from bench.config import RunConfig
from bench.method import git_commit, machine_info, method_notes, version
from bench.page import write_markdown
from bench.report import (
    Report,
    load_json,
    memory_figures,
    print_report,
    result_text,
    write_json,
)
from bench.stats import Figure, client, unavailable
from orchestrator.broker import EmbeddedBroker, free_port, start_redis_server
from orchestrator.cli.bars import stderr_progress
from shared.models import new_id

BASELINES = {
    "throughput": "throughput/raw/{n}",
    "latency": "latency/raw",
    "concurrency": "concurrency/raw",
    "backlog": "backlog/raw",
}


class Runner:
    """Measures the figures of one run."""

    def __init__(self, cfg: RunConfig, console: Console) -> None:
        self.cfg = cfg
        self.console = console
        self.run_id = new_id("b").split("-", 1)[1]
        self.figures: list[Figure] = []
        self.versions: dict[str, Any] = {}
        self.url = ""
        self.work = Path()
        self._t0 = time.monotonic()
        self._bar: Progress | None = None  # figures measured, on stderr (a terminal only)

    def log(self, text: str) -> None:
        """A progress line with the elapsed time (above the bar while one is drawn)."""
        line = f"[dim]{time.monotonic() - self._t0:6.1f}s[/dim] {text}"
        if self._bar is not None and not self._bar.disable:
            self._bar.console.print(line)
        else:
            self.console.print(line)

    def prefix(self, name: str) -> str:
        """A key prefix no other figure or run uses."""
        return f"bench-{self.run_id}-{name}:"

    def add(self, fig: Figure) -> Figure:
        """Record a figure (with its baseline) and print it."""
        if fig.baseline is None and fig.system != "raw":
            pattern = BASELINES.get(fig.scenario)
            if pattern is not None:
                fig.baseline = pattern.format(n=fig.key.rsplit("/", 1)[-1])
        self.figures.append(fig)
        if self._bar is not None:
            self._bar.advance(self._bar.task_ids[0])
        colour = "green" if fig.ok else "yellow"
        self.log(f"[{colour}]{fig.key}[/{colour}]: {result_text(fig)}")
        return fig

    async def measure(
        self,
        key: str,
        setup: str,
        make: Callable[[], Awaitable[Figure]],
        *,
        repeat: int = 1,
    ) -> Figure | None:
        """Measure one figure (the median of `repeat` runs); a failure becomes a failed figure."""
        scenario, system = key.split("/")[:2]
        runs: list[Figure] = []
        try:
            for _ in range(max(1, repeat)):
                runs.append(await asyncio.wait_for(make(), self.cfg.scenario_timeout))
        except Exception as exc:  # one failed figure must not end the run
            self.add(
                Figure(
                    key,
                    scenario,
                    system,
                    setup,
                    status="failed",
                    reason=f"{type(exc).__name__}: {exc}"[:500],
                )
            )
            return None
        runs.sort(key=lambda f: f.primary)
        fig = runs[len(runs) // 2]
        if len(runs) > 1:
            rates = [f.primary for f in runs]
            fig.values.update(
                {
                    "repeats": float(len(runs)),
                    "min_tasks_per_s": min(rates),
                    "max_tasks_per_s": max(rates),
                }
            )
        return self.add(fig)

    def fail_all(self, keys: list[tuple[str, str]], reason: str, status: str = "failed") -> None:
        """Record figures that a failed set-up could not measure."""
        for key, setup in keys:
            scenario, system = key.split("/")[:2]
            self.add(unavailable(key, scenario, system, setup, reason))
            self.figures[-1].status = status

    # ------------------------------------------------------------------------- raw

    async def raw_section(self) -> None:
        cfg = self.cfg
        want = cfg.wants
        for w in sorted(set(cfg.workers) | ({1} if want("latency", "raw") else set())):
            jobs = []
            if want("throughput", "raw") and w in cfg.workers:
                jobs.append("throughput")
            if w == 1 and want("latency", "raw"):
                jobs.append("latency")
            if w == 1 and want("concurrency", "raw"):
                jobs.append("concurrency")
            if not jobs:
                continue
            rig = raw.RawRig(
                self.url, self.prefix(f"raw{w}"), count=cfg.concurrency, log_dir=self.work
            )
            async with rig:
                await rig.start_consumers(w)
                plural = "es" if w > 1 else ""
                if "throughput" in jobs:
                    await self.measure(
                        f"throughput/raw/{w}",
                        f"{w} consumer process{plural}",
                        partial(
                            raw.throughput,
                            rig,
                            cfg.tasks,
                            cfg.batch,
                            cfg.warmup,
                            cfg.scenario_timeout,
                        ),
                        repeat=cfg.repeat,
                    )
                if "latency" in jobs:
                    await self.measure(
                        "latency/raw",
                        "1 consumer process, 1 client",
                        partial(raw.latency, rig, cfg.latency_round_trips, min(50, cfg.warmup)),
                    )
                if "concurrency" in jobs:
                    await self.measure(
                        "concurrency/raw",
                        f"1 consumer process, {cfg.clients} clients in 1 process",
                        partial(raw.concurrency, rig, cfg.clients, cfg.client_rounds),
                    )
        if want("backlog", "raw"):
            rig = raw.RawRig(
                self.url, self.prefix("rawbacklog"), count=cfg.concurrency, log_dir=self.work
            )
            async with rig:
                await self.measure(
                    "backlog/raw",
                    f"{cfg.backlog_tasks:,} entries queued, then 1 consumer process",
                    partial(raw.backlog, rig, cfg.backlog_tasks, 1, cfg.scenario_timeout),
                )

    # ------------------------------------------------------------------------ ours

    def cluster(self, name: str, concurrency: int | None = None) -> ours.Cluster:
        """A fresh cluster (orchestrator + pools) under its own prefix."""
        return ours.Cluster(
            self.url,
            self.prefix(name),
            self.work / name,
            concurrency=concurrency or self.cfg.concurrency,
        )

    async def ours_section(self) -> None:
        cfg = self.cfg
        want = cfg.wants
        c = cfg.concurrency
        if (
            (want("throughput", "ours") and 1 in cfg.workers)
            or want("latency", "ours")
            or want("concurrency", "ours")
        ):
            await self._guarded("single pool", self._single_pool)
        if want("throughput", "ours"):
            for w in cfg.workers:
                if w == 1:
                    continue

                async def direct(cluster: ours.Cluster, w: int = w) -> None:
                    pool = await cluster.spawn("bench", w)
                    key, setup = f"throughput/direct/{w}", f"1 pool, {w} worker processes x {c}"
                    run = self._ours_throughput(cluster, key, setup, pool)
                    await self.measure(key, setup, run, repeat=cfg.repeat)

                await self._guarded(f"direct{w}", direct)
        routed_pools = [w for w in cfg.workers if w > 1] if want("throughput", "ours") else []
        if want("fanout", "ours") and 2 not in routed_pools:
            routed_pools.append(2)
        for w in routed_pools:
            await self._guarded(f"routed{w}", partial(self._routed, pools=w))
        if want("backlog", "ours"):

            async def backlog(cluster: ours.Cluster) -> None:
                await self.measure(
                    "backlog/direct",
                    f"{cfg.backlog_tasks:,} tasks queued, then 1 worker process",
                    partial(
                        ours.backlog,
                        cluster,
                        n=cfg.backlog_tasks,
                        batch=1000,
                        timeout=cfg.scenario_timeout,
                    ),
                )

            await self._guarded("backlog", backlog)
        if want("mixed", "ours"):
            durations = mixed.plan(cfg.mixed_tasks)

            async def mixed_run(cluster: ours.Cluster) -> None:
                await self.measure(
                    "mixed/direct",
                    f"1 pool, {mixed.WORKERS} worker processes x {mixed.SLOTS_PER_WORKER}",
                    partial(mixed.ours, cluster, durations, timeout=cfg.scenario_timeout),
                )

            await self._guarded("mixed", mixed_run, concurrency=mixed.SLOTS_PER_WORKER)
        if want("startup", "ours"):

            async def startup(cluster: ours.Cluster) -> None:
                await self.measure(
                    "startup/direct",
                    f"{cfg.startup_spawns} new local pools in turn",
                    partial(mixed.first_result, cluster, spawns=cfg.startup_spawns),
                )

            await self._guarded("startup", startup)

    async def _guarded(
        self,
        name: str,
        body: Callable[[ours.Cluster], Awaitable[None]],
        concurrency: int | None = None,
    ) -> None:
        try:
            async with self.cluster(name.replace(" ", "-"), concurrency) as cluster:
                await body(cluster)
        except Exception as exc:  # the cluster could not start: say so and go on
            reason = f"{name}: {type(exc).__name__}: {exc}"[:500]
            self.add(Figure(f"setup/ours/{name}", "setup", "ours", name, status="failed"))
            self.figures[-1].reason = reason

    def _ours_throughput(
        self,
        cluster: ours.Cluster,
        key: str,
        setup: str,
        pool_id: str | None,
        scenario: str = "throughput",
    ) -> Callable[[], Awaitable[Figure]]:
        """One run of a throughput figure of ours, at the run's sizes."""
        cfg = self.cfg
        return partial(
            ours.throughput,
            cluster,
            key=key,
            setup=setup,
            n=cfg.tasks,
            batch=cfg.batch,
            warmup=cfg.warmup,
            timeout=cfg.scenario_timeout,
            pool_id=pool_id,
            scenario=scenario,
        )

    async def _single_pool(self, cluster: ours.Cluster) -> None:
        cfg = self.cfg
        want = cfg.wants
        c = cfg.concurrency
        pool = await cluster.spawn("bench", 1)
        if want("throughput", "ours") and 1 in cfg.workers:
            for pool_id, system, how in (
                (pool, "direct", "submit_many(pool_id)"),
                (None, "routed", "submit_many() via the orchestrator"),
            ):
                setup = f"1 pool, 1 worker process x {c}, {how}"
                key = f"throughput/{system}/1"
                run = self._ours_throughput(cluster, key, setup, pool_id)
                await self.measure(key, setup, run, repeat=cfg.repeat)
        round_trip_calls = ((pool, "direct", "execute_on_pool"), (None, "routed", "route_task"))
        if want("latency", "ours"):
            for pool_id, system, how in round_trip_calls:
                setup = f"{how}, 1 pool, 1 worker process"
                await self.measure(
                    f"latency/{system}",
                    setup,
                    partial(
                        ours.latency,
                        cluster,
                        n=cfg.latency_round_trips,
                        warmup=min(50, cfg.warmup),
                        pool_id=pool_id,
                        setup=setup,
                    ),
                )
        if want("concurrency", "ours"):
            for pool_id, system, how in round_trip_calls:
                setup = f"{cfg.clients} PoolManagers in 1 process ({how}), 1 worker process"
                await self.measure(
                    f"concurrency/{system}",
                    setup,
                    partial(
                        ours.concurrency,
                        cluster,
                        clients=cfg.clients,
                        rounds=cfg.client_rounds,
                        pool_id=pool_id,
                        setup=setup,
                    ),
                )

    async def _routed(self, cluster: ours.Cluster, pools: int) -> None:
        cfg = self.cfg
        c = cfg.concurrency
        for i in range(pools):
            await cluster.spawn(f"bench{i}", 1)
        key = f"throughput/routed/{pools}"
        setup = f"{pools} pools x 1 worker process x {c}, via the orchestrator"
        await self.measure(
            key, setup, self._ours_throughput(cluster, key, setup, None), repeat=cfg.repeat
        )
        if pools != 2 or not cfg.wants("fanout", "ours") or cfg.fanout_pools <= 2:
            return
        total = cfg.fanout_pools
        self.log(f"fan-out: spawning {total - 2} pools without workers")
        await ours.add_idle_pools(cluster, total - 2)
        key = f"fanout/routed/{total}"
        setup = f"{total} pools (2 with 1 worker process x {c}, {total - 2} without workers)"
        run = self._ours_throughput(cluster, key, setup, None, scenario="fanout")

        async def fanout() -> Figure:
            fig = await run()
            fig.values["pools"] = float(total)
            fig.baseline = "throughput/routed/2"
            return fig

        await self.measure(key, setup, fanout, repeat=cfg.repeat)

    # ------------------------------------------------------------------------- run

    async def run(self) -> Report:
        """Measure every wanted figure and build the report."""
        with stderr_progress() as bar:
            bar.add_task("bench: figures measured", total=None)
            self._bar = bar
            try:
                return await self._run()
            finally:
                self._bar = None

    async def _run(self) -> Report:
        cfg = self.cfg
        started = datetime.now(UTC)
        machine = machine_info()
        self.work = Path(tempfile.mkdtemp(prefix="mahavishnu-bench-"))
        broker: EmbeddedBroker | None = None
        cluster: Any = None
        try:
            if cfg.redis_url:
                self.url = cfg.redis_url
                where = "the Redis given with --redis-url (shared: figures may be disturbed)"
            elif cfg.cluster:
                from tests.cluster_servers import start_cluster

                cluster = await asyncio.to_thread(start_cluster, self.work / "cluster")
                self.url = cluster.url
                where = "a private Redis Cluster of three primaries (appendonly off)"
            else:
                broker = await start_redis_server(
                    free_port(), self.work / "redis", appendonly=False
                )
                self.url = broker.url
                where = "a private redis-server started by the harness (appendonly off)"
            self.log(f"Redis: {where}")
            probe: Any = client(self.url)
            try:
                if isinstance(probe, RedisCluster):
                    info = await probe.info("server", target_nodes=RedisCluster.DEFAULT_NODE)
                else:
                    info = await probe.info("server")
            finally:
                await probe.aclose()
            self.versions.update(
                {
                    "python": platform.python_version(),
                    "redis_server": str(info.get("redis_version", "?")),
                    "redis_py": version("redis"),
                    "hiredis": version("hiredis"),
                    "msgpack": version("msgpack"),
                    "pydantic": version("pydantic"),
                    "project": f"{version('mahavishnu-pools')} at {git_commit()}",
                    "arq": "not measured",
                    "bullmq": "not measured",
                }
            )
            if "raw" in cfg.systems:
                await self.raw_section()
            if "arq" in cfg.systems:
                await arq_section(self)
            if "bullmq" in cfg.systems:
                await bullmq_section(self)
            if "ours" in cfg.systems:
                await self.ours_section()
        finally:
            if broker is not None:
                await broker.stop()
            if cluster is not None:
                await asyncio.to_thread(cluster.stop)
        machine["load_end"] = round(os.getloadavg()[0], 2)
        figures = self.figures + memory_figures(self.figures)
        failed = [f for f in figures if f.status == "failed"]
        if failed:
            self.log(f"[yellow]{len(failed)} figure(s) failed; logs kept in {self.work}[/yellow]")
        else:
            shutil.rmtree(self.work, ignore_errors=True)
        meta = {
            "command": cfg.command,
            "started_at": started.strftime("%Y-%m-%d %H:%M UTC"),
            "duration_s": round(time.monotonic() - self._t0, 1),
            "machine": machine,
            "versions": self.versions,
            "redis": where,
            "method": method_notes(cfg),
            "notes": cfg.notes,
        }
        report = Report(meta, cfg.describe(), figures)
        report.judge()
        return report


async def run(cfg: RunConfig, console: Console | None = None) -> Report:
    """Run the harness and write its outputs; return the report."""
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    for name in [k for k in os.environ if k.startswith("MAHAVISHNU_")]:
        del os.environ[name]  # the bench's settings are its own, not the caller's
    runner = Runner(cfg, console)
    report = await runner.run()
    print_report(report, console)
    if cfg.json_path is not None:
        write_json(report, cfg.json_path)
        console.print(f"JSON: {cfg.json_path}")
    if cfg.markdown_path is not None:
        write_markdown(report, cfg.markdown_path)
        console.print(f"Markdown: {cfg.markdown_path}")
    return report


def rerender(json_path: Path, markdown_path: Path | None) -> Report:
    """Print the tables of an earlier run's JSON and write its page again (no measuring)."""
    report = load_json(json_path)
    console = Console(width=None if sys.stdout.isatty() else 160)
    print_report(report, console)
    if markdown_path is not None:
        write_markdown(report, markdown_path)
        console.print(f"Markdown: {markdown_path}")
    return report


def command_line(argv: list[str]) -> str:
    """The command as a user would type it."""
    return " ".join(["python -m bench", *argv])
