"""The arq baseline: the same no-op job through arq, in a virtual environment of its own.

arq pins redis-py below 6, so it must never enter the project's environment. On first use the
harness creates one (`python -m venv` + `pip install arq`, by default in
`.mahavishnu/bench-arq-venv`) and runs the plain scripts `bench/arq_worker.py` and
`bench/arq_client.py` with that environment's python. When the environment cannot be created
(no network, no pip), every arq figure is reported as unavailable with the reason.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import ROOT
from bench.mixed import mixed_figure
from bench.peer import PeerUnavailable, PeerWorkers, last_json, plan_ms, run_client, tail
from bench.raw import child_env
from bench.stats import (
    Figure,
    client,
    cpu_seconds,
    cpu_values,
    latency_figure,
    peak_rss_mb,
    redis_cpu_seconds,
    throughput_figure,
)

WORKER_SCRIPT = ROOT / "bench" / "arq_worker.py"
CLIENT_SCRIPT = ROOT / "bench" / "arq_client.py"
ENQUEUE_BATCH = 100
DEFAULTS = (
    "max_jobs=10, poll_delay=0.5 s, queue_read_limit=100, job_timeout=300 s, "
    "keep_result=3600 s, max_tries=5, pickle serializer"
)
TUNED = "max_jobs=64, poll_delay=0.01 s, the rest default"


class ArqUnavailable(PeerUnavailable):
    """The arq environment could not be created or used."""


@dataclass(frozen=True)
class ArqEnv:
    """The arq virtual environment: its python and the versions it holds."""

    python: Path
    arq_version: str
    redis_py: str

    @property
    def describe(self) -> str:
        """`0.28.0 (redis-py 5.3.1)`."""
        return f"{self.arq_version} (redis-py {self.redis_py})"


def _python(venv: Path) -> Path:
    return venv / ("Scripts" if sys.platform == "win32" else "bin") / "python"


def _versions(python: Path) -> dict[str, Any]:
    done = subprocess.run(
        [str(python), str(CLIENT_SCRIPT), "versions"],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    if done.returncode != 0:
        raise ArqUnavailable(f"arq does not import in {python}: {tail(done.stderr)}")
    return last_json(done.stdout)


def ensure_arq_env(venv: Path) -> ArqEnv:
    """The arq environment, created (venv + pip install arq) when missing; ArqUnavailable if not."""
    python = _python(venv)
    if python.exists():
        try:
            found = _versions(python)
            return ArqEnv(python, found["arq"], found["redis_py"])
        except (ArqUnavailable, subprocess.SubprocessError, ValueError, KeyError):
            pass  # broken or half-made: install into it again
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", "arq"],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ArqUnavailable(f"`{' '.join(step[:4])}` failed: {exc}") from None
        if done.returncode != 0:
            raise ArqUnavailable(
                f"`{' '.join(step[:4])} ...` exited {done.returncode}: "
                f"{tail(done.stderr or done.stdout)}"
            )
    found = _versions(python)
    return ArqEnv(python, found["arq"], found["redis_py"])


class ArqWorkers(PeerWorkers):
    """arq worker processes on one queue."""

    def __init__(
        self,
        env: ArqEnv,
        url: str,
        queue: str,
        log_dir: Path,
        *,
        tuned: bool,
        max_jobs: int | None = None,
    ) -> None:
        argv = [str(env.python), str(WORKER_SCRIPT), "--url", url]
        argv += ["--queue", queue] + (["--tuned"] if tuned else [])
        if max_jobs is not None:
            argv += ["--max-jobs", str(max_jobs)]
        stem = f"arq-{queue.replace(':', '_')}-"
        super().__init__(argv, child_env(), log_dir, stem, "arq worker")


async def _client(env: ArqEnv, args: list[str], timeout: float) -> dict[str, Any]:
    argv = [str(env.python), str(CLIENT_SCRIPT), *args]
    return await run_client(argv, env=child_env(), timeout=timeout, what="arq client")


def _name(tuned: bool) -> str:
    return "arq-tuned" if tuned else "arq"


async def throughput(
    env: ArqEnv,
    url: str,
    queue: str,
    log_dir: Path,
    *,
    workers: int,
    n: int,
    warmup: int,
    tuned: bool,
    timeout: float,
) -> Figure:
    """Jobs/s through `workers` arq worker processes, from the first enqueue to an empty queue."""
    redis: Any = client(url)
    try:
        async with ArqWorkers(env, url, queue, log_dir, tuned=tuned) as pool:
            await pool.start(workers)
            pids = pool.pids
            before = {p: cpu_seconds(p) for p in pids}
            redis_before = await redis_cpu_seconds(redis)
            args = ["throughput", "--url", url, "--queue", queue, "--n", str(n)]
            args += ["--batch", str(ENQUEUE_BATCH), "--warmup", str(warmup)]
            data = await _client(env, args, timeout)
            redis_cpu = await redis_cpu_seconds(redis) - redis_before
            worker_cpu = sum(cpu_seconds(p) - before[p] for p in pids)
            rss = max((peak_rss_mb(p) for p in pids), default=0.0)
    finally:
        await redis.aclose()
    seconds = float(data["seconds"])
    if int(data["results"]) != n:
        raise RuntimeError(f"arq wrote {data['results']} results for {n} jobs")
    spent = {"client": float(data["client_cpu"]), "workers": worker_cpu, "redis": redis_cpu}
    return throughput_figure(
        f"throughput/{_name(tuned)}/{workers}",
        _name(tuned),
        f"{workers} worker process{'es' if workers > 1 else ''} ({TUNED if tuned else 'defaults'})",
        n,
        seconds,
        {"rss_peak_mb.worker": rss, **cpu_values(spent, n, seconds)},
    )


async def latency(
    env: ArqEnv,
    url: str,
    queue: str,
    log_dir: Path,
    *,
    n: int,
    warmup: int,
    tuned: bool,
    timeout: float,
) -> Figure:
    """Sequential enqueue + result round trips through one arq worker."""
    async with ArqWorkers(env, url, queue, log_dir, tuned=tuned) as pool:
        await pool.start(1)
        args = ["latency", "--url", url, "--queue", queue, "--n", str(n), "--warmup", str(warmup)]
        data = await _client(env, args, timeout)
    return latency_figure(
        _name(tuned),
        f"1 worker process ({TUNED if tuned else 'defaults'}), result polled every 5 ms",
        [float(s) for s in data["samples"]],
    )


async def mixed(
    env: ArqEnv,
    url: str,
    queue: str,
    log_dir: Path,
    *,
    plan_s: Sequence[float],
    workers: int,
    slots: int,
    timeout: float,
) -> Figure:
    """The makespan from enqueueing the plan's `sleep_ms` jobs until arq's queue is empty."""
    async with ArqWorkers(env, url, queue, log_dir, tuned=False, max_jobs=slots) as pool:
        await pool.start(workers)
        args = ["mixed", "--url", url, "--queue", queue, "--plan", plan_ms(plan_s)]
        data = await _client(env, args, timeout)
    if int(data["results"]) != len(plan_s):
        raise RuntimeError(f"arq wrote {data['results']} results for {len(plan_s)} jobs")
    seconds = float(data["seconds"])
    return mixed_figure("arq", plan_s, seconds, workers=workers, slots=slots)
