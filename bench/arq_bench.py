"""The arq baseline: the same no-op job through arq, in a virtual environment of its own.

arq pins redis-py below 6, so it must never enter the project's environment. On first use the
harness creates one (`python -m venv` + `pip install arq`, by default in
`.mahavishnu/bench-arq-venv`) and runs the plain scripts `bench/arq_worker.py` and
`bench/arq_client.py` with that environment's python. When the environment cannot be created
(no network, no pip), every arq figure is reported as unavailable with the reason.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import ROOT
from bench.raw import child_env
from bench.stats import (
    Figure,
    client,
    cpu_seconds,
    latency_values,
    peak_rss_mb,
    redis_cpu_seconds,
    start_process,
    stop_process,
    wait_for_line,
)

WORKER_SCRIPT = ROOT / "bench" / "arq_worker.py"
CLIENT_SCRIPT = ROOT / "bench" / "arq_client.py"
ENQUEUE_BATCH = 100
DEFAULTS = (
    "max_jobs=10, poll_delay=0.5 s, queue_read_limit=100, job_timeout=300 s, "
    "keep_result=3600 s, max_tries=5, pickle serializer"
)
TUNED = "max_jobs=64, poll_delay=0.01 s, the rest default"


class ArqUnavailable(RuntimeError):
    """The arq environment could not be created or used."""


@dataclass(frozen=True)
class ArqEnv:
    """The arq virtual environment: its python and the versions it holds."""

    python: Path
    arq_version: str
    redis_py: str


def _python(venv: Path) -> Path:
    return venv / ("Scripts" if sys.platform == "win32" else "bin") / "python"


def _tail(text: str, lines: int = 3) -> str:
    kept = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])[:400]


def _versions(python: Path) -> dict[str, Any]:
    done = subprocess.run(
        [str(python), str(CLIENT_SCRIPT), "versions"],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    if done.returncode != 0:
        raise ArqUnavailable(f"arq does not import in {python}: {_tail(done.stderr)}")
    data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return data


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
                f"{_tail(done.stderr or done.stdout)}"
            )
    found = _versions(python)
    return ArqEnv(python, found["arq"], found["redis_py"])


class ArqWorkers:
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
        self.env = env
        self.max_jobs = max_jobs
        self.url = url
        self.queue = queue
        self.log_dir = log_dir
        self.tuned = tuned
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, n: int) -> None:
        """Start `n` workers and wait until each polls."""
        for i in range(n):
            args = [str(self.env.python), str(WORKER_SCRIPT), "--url", self.url]
            args += ["--queue", self.queue] + (["--tuned"] if self.tuned else [])
            if self.max_jobs is not None:
                args += ["--max-jobs", str(self.max_jobs)]
            proc = await start_process(
                args,
                env=child_env(),
                cwd=ROOT,
                log_path=self.log_dir / f"arq-{self.queue.replace(':', '_')}-{i}.log",
                stdout_pipe=True,
            )
            self.procs.append(proc)
            await wait_for_line(proc, "ready", 60.0, "arq worker")

    @property
    def pids(self) -> list[int]:
        """Pids of the running workers."""
        return [p.pid for p in self.procs if p.returncode is None]

    async def stop(self) -> None:
        """Stop every worker (SIGTERM: arq finishes its jobs and exits)."""
        await asyncio.gather(*(stop_process(p, 10.0) for p in self.procs))
        self.procs = []


async def _client(env: ArqEnv, args: list[str], timeout: float) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        str(env.python),
        str(CLIENT_SCRIPT),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(),
        cwd=str(ROOT),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"arq client exited {proc.returncode}: {_tail(err.decode())}")
    data: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return data


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
    pool = ArqWorkers(env, url, queue, log_dir, tuned=tuned)
    redis: Any = client(url)
    try:
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
        await pool.stop()
        await redis.aclose()
    seconds = float(data["seconds"])
    if int(data["results"]) != n:
        raise RuntimeError(f"arq wrote {data['results']} results for {n} jobs")
    values = {
        "tasks": float(n),
        "seconds": seconds,
        "tasks_per_s": n / seconds,
        "rss_peak_mb.worker": rss,
        "cpu_us_per_task.client": float(data["client_cpu"]) / n * 1e6,
        "core_share.client": float(data["client_cpu"]) / seconds,
        "cpu_us_per_task.workers": worker_cpu / n * 1e6,
        "core_share.workers": worker_cpu / seconds,
        "cpu_us_per_task.redis": redis_cpu / n * 1e6,
        "core_share.redis": redis_cpu / seconds,
    }
    return Figure(
        key=f"throughput/{_name(tuned)}/{workers}",
        scenario="throughput",
        system=_name(tuned),
        setup=f"{workers} worker process{'es' if workers > 1 else ''} "
        f"({TUNED if tuned else 'defaults'})",
        primary=n / seconds,
        unit="tasks/s",
        values=values,
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
    pool = ArqWorkers(env, url, queue, log_dir, tuned=tuned)
    try:
        await pool.start(1)
        args = ["latency", "--url", url, "--queue", queue, "--n", str(n), "--warmup", str(warmup)]
        data = await _client(env, args, timeout)
    finally:
        await pool.stop()
    values = latency_values([float(s) for s in data["samples"]])
    return Figure(
        key=f"latency/{_name(tuned)}",
        scenario="latency",
        system=_name(tuned),
        setup=f"1 worker process ({TUNED if tuned else 'defaults'}), result polled every 5 ms",
        primary=values["p50_ms"],
        unit="ms p50",
        values=values,
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
) -> float:
    """Seconds from enqueueing the plan's `sleep_ms` jobs until arq's queue is empty."""
    pool = ArqWorkers(env, url, queue, log_dir, tuned=False, max_jobs=slots)
    try:
        await pool.start(workers)
        plan = ",".join(str(round(s * 1000)) for s in plan_s)
        data = await _client(
            env, ["mixed", "--url", url, "--queue", queue, "--plan", plan], timeout
        )
    finally:
        await pool.stop()
    if int(data["results"]) != len(plan_s):
        raise RuntimeError(f"arq wrote {data['results']} results for {len(plan_s)} jobs")
    return float(data["seconds"])
