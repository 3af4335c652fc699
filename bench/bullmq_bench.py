"""BullMQ beside the pools: the same no-op job through BullMQ workers, in a Node environment.

On first use the harness creates a Node environment of its own (by default in
`.mahavishnu/bench-bullmq`): a `package.json` pinning `bullmq` and `ioredis`, then `npm
install`. The scripts `bench/bullmq/worker.cjs` and `bench/bullmq/client.cjs` stay in the
checkout and find the packages through `NODE_PATH`. When Node, npm or the registry is missing,
every BullMQ figure is reported as unavailable with the reason instead of failing the run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import ROOT
from bench.mixed import mixed_figure
from bench.peer import PeerUnavailable, PeerWorkers, last_json, plan_ms, run_client, tail
from bench.stats import (
    Figure,
    client,
    cpu_values,
    delete_prefix,
    latency_figure,
    peak_rss_mb,
    throughput_figure,
)

BULLMQ_VERSION = "6.7.6"
IOREDIS_VERSION = "6.1.0"
"""Pinned: the newest releases when the harness was written (BullMQ's own tests use ioredis 6)."""

WORKER_SCRIPT = ROOT / "bench" / "bullmq" / "worker.cjs"
CLIENT_SCRIPT = ROOT / "bench" / "bullmq" / "client.cjs"
ENQUEUE_BATCH = 500
QUEUE = "bench"


class BullmqUnavailable(PeerUnavailable):
    """The Node environment with BullMQ could not be created or used."""


@dataclass(frozen=True)
class BullmqEnv:
    """The Node environment: the node binary, its node_modules and the versions it holds."""

    node: str
    modules: Path
    bullmq: str
    ioredis: str
    node_version: str

    def child_env(self) -> dict[str, str]:
        """The environment of a BullMQ script: NODE_PATH at the harness's node_modules."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAHAVISHNU_")}
        env["NODE_PATH"] = str(self.modules)
        return env

    @property
    def describe(self) -> str:
        """`6.7.6 (ioredis 6.1.0, Node 20.20.2)`."""
        return f"{self.bullmq} (ioredis {self.ioredis}, Node {self.node_version})"


def _installed(modules: Path, package: str) -> str | None:
    try:
        data = json.loads((modules / package / "package.json").read_text())
    except (OSError, ValueError):
        return None
    version = data.get("version")
    return version if isinstance(version, str) else None


def ensure_bullmq_env(folder: Path) -> BullmqEnv:
    """The Node environment, created (`npm install` of the pinned versions) when missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(n for n, p in (("node", node), ("npm", npm)) if p is None)
        raise BullmqUnavailable(f"{missing} not found on PATH")
    modules = folder / "node_modules"
    wanted = {"bullmq": BULLMQ_VERSION, "ioredis": IOREDIS_VERSION}
    if any(_installed(modules, p) != v for p, v in wanted.items()):
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {"name": "mahavishnu-bench-bullmq", "private": True, "dependencies": wanted}
        (folder / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
        step = [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"]
        try:
            done = subprocess.run(
                step, cwd=folder, capture_output=True, text=True, timeout=120, check=False
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise BullmqUnavailable(f"`npm install` in {folder} failed: {exc}") from None
        if done.returncode != 0:
            raise BullmqUnavailable(
                f"`npm install` in {folder} exited {done.returncode}: "
                f"{tail(done.stderr or done.stdout)}"
            )
    env = BullmqEnv(node, modules, "", "", "")
    try:
        done = subprocess.run(
            [node, str(CLIENT_SCRIPT), "versions"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env.child_env(),
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BullmqUnavailable(f"BullMQ does not load: {exc}") from None
    if done.returncode != 0:
        raise BullmqUnavailable(f"BullMQ does not load from {modules}: {tail(done.stderr)}")
    found = last_json(done.stdout)
    return BullmqEnv(node, modules, found["bullmq"], found["ioredis"], found["node"])


class BullmqWorkers(PeerWorkers):
    """BullMQ worker processes on one queue, and the queue's keys (deleted on exit)."""

    def __init__(
        self, env: BullmqEnv, url: str, prefix: str, log_dir: Path, *, concurrency: int
    ) -> None:
        self.env = env
        self.url = url
        self.prefix = prefix.rstrip(":")
        argv = [env.node, str(WORKER_SCRIPT), "--url", url, "--queue", QUEUE]
        argv += ["--prefix", self.prefix, "--concurrency", str(concurrency)]
        super().__init__(argv, env.child_env(), log_dir, f"{self.prefix}-worker", "BullMQ worker")

    async def __aexit__(self, *exc: object) -> None:
        await super().__aexit__(*exc)
        redis: Any = client(self.url)
        try:
            await delete_prefix(redis, f"{self.prefix}:")
        finally:
            await redis.aclose()

    async def client(self, args: Sequence[str], timeout: float) -> dict[str, Any]:
        """Run `client.cjs` with these arguments on this queue; its JSON answer."""
        argv = [self.env.node, str(CLIENT_SCRIPT), *args, "--url", self.url]
        argv += ["--queue", QUEUE, "--prefix", self.prefix, "--timeout", f"{timeout:g}"]
        return await run_client(
            argv, env=self.env.child_env(), timeout=timeout + 30, what="BullMQ client"
        )


def system_name(concurrency: int) -> str:
    """`bullmq` at concurrency 10 (the figure the targets use), `bullmq-c1` at 1, ..."""
    return "bullmq" if concurrency == 10 else f"bullmq-c{concurrency}"


def _setup(workers: int, concurrency: int) -> str:
    plural = "es" if workers > 1 else ""
    return f"{workers} worker process{plural}, concurrency {concurrency}"


async def throughput(
    env: BullmqEnv,
    url: str,
    prefix: str,
    log_dir: Path,
    *,
    workers: int,
    concurrency: int,
    n: int,
    warmup: int,
    timeout: float,
) -> Figure:
    """Jobs/s from the first `addBulk` until every job is in the completed set."""
    async with BullmqWorkers(env, url, prefix, log_dir, concurrency=concurrency) as rig:
        await rig.start(workers)
        pids = rig.pids
        args = ["throughput", "--n", str(n), "--batch", str(ENQUEUE_BATCH)]
        args += ["--warmup", str(warmup), "--pids", ",".join(map(str, pids))]
        data = await rig.client(args, timeout)
        rss = max((peak_rss_mb(p) for p in pids), default=0.0)
    seconds = float(data["seconds"])
    if int(data["completed"]) != n:
        raise RuntimeError(f"BullMQ completed {data['completed']} of {n} jobs")
    spent = {
        "client": float(data["client_cpu"]),
        "workers": float(data["worker_cpu"]),
        "redis": float(data["redis_cpu"]),
    }
    return throughput_figure(
        f"throughput/{system_name(concurrency)}/{workers}",
        system_name(concurrency),
        _setup(workers, concurrency),
        n,
        seconds,
        {**cpu_values(spent, n, seconds), "rss_peak_mb.worker": rss},
    )


async def latency(
    env: BullmqEnv,
    url: str,
    prefix: str,
    log_dir: Path,
    *,
    concurrency: int,
    n: int,
    warmup: int,
    timeout: float,
) -> Figure:
    """Sequential `add` + `waitUntilFinished` round trips through one worker process."""
    async with BullmqWorkers(env, url, prefix, log_dir, concurrency=concurrency) as rig:
        await rig.start(1)
        data = await rig.client(["latency", "--n", str(n), "--warmup", str(warmup)], timeout)
    return latency_figure(
        system_name(concurrency),
        f"{_setup(1, concurrency)}, job.waitUntilFinished(QueueEvents)",
        [float(s) for s in data["samples"]],
    )


async def mixed(
    env: BullmqEnv,
    url: str,
    prefix: str,
    log_dir: Path,
    *,
    plan_s: Sequence[float],
    workers: int,
    slots: int,
    timeout: float,
) -> Figure:
    """The makespan from the first `addBulk` of the plan's jobs until every one completed."""
    async with BullmqWorkers(env, url, prefix, log_dir, concurrency=slots) as rig:
        await rig.start(workers)
        data = await rig.client(["mixed", "--plan", plan_ms(plan_s)], timeout)
    if int(data["completed"]) != len(plan_s):
        raise RuntimeError(f"BullMQ completed {data['completed']} of {len(plan_s)} jobs")
    seconds = float(data["seconds"])
    return mixed_figure("bullmq", plan_s, seconds, workers=workers, slots=slots)
