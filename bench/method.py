"""What a run records about itself: the machine, the versions, and how each figure is measured."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench import arq_bench, bullmq_bench, mixed
from bench.config import ROOT, RunConfig


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory and OS of this machine."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = 0.0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) / (1024.0 * 1024.0)
    except (OSError, ValueError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory, 1),
        "platform": platform.platform(),
        "load_start": round(os.getloadavg()[0], 2),
    }


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = head.stdout.strip() or "unknown"
    return f"{commit} (with uncommitted changes)" if dirty.stdout.strip() else commit


def _shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def method_notes(cfg: RunConfig) -> list[str]:
    """How each figure is measured, for the page."""
    c = cfg.concurrency
    return [
        "Redis: a private `redis-server` (appendonly off, no RDB saves) on a free loopback port, "
        "started by the harness (`orchestrator.broker.start_redis_server`), unless "
        "`--redis-url` is given. Every system runs against it, one figure at a time, each under "
        "its own key prefix or queue name, deleted afterwards.",
        f"Raw ceiling (`bench/raw.py`, `bench/raw_consumer.py`): the producer (this process, "
        f"redis-py asyncio + hiredis) XADDs pipelined batches of {cfg.batch}; each consumer "
        f"process reads `XREADGROUP COUNT {c}` and answers each batch with one pipeline of "
        "XADD replies + XACK + XDEL; the producer reads replies with blocking XREAD.",
        "arq (`bench/arq_bench.py`): arq in its own virtual environment "
        f"(`{_shown(cfg.arq_venv)}`), worker processes with arq's defaults "
        f"({arq_bench.DEFAULTS}); a tuned row uses "
        f"{arq_bench.TUNED}. arq has no batch enqueue: batches are {arq_bench.ENQUEUE_BATCH} "
        "concurrent `enqueue_job` calls; throughput ends when arq's queue is empty (a job leaves "
        "it when its result is written); latency polls `Job.result` every 5 ms. arq's default "
        f"worker polls every 0.5 s, so its figures use {cfg.arq_tasks:,} jobs and "
        f"{cfg.arq_latency_round_trips} round trips.",
        "BullMQ (`bench/bullmq_bench.py`, `bench/bullmq/*.cjs`): npm `bullmq` "
        f"{bullmq_bench.BULLMQ_VERSION} with ioredis {bullmq_bench.IOREDIS_VERSION} in a Node "
        f"environment the harness creates (`{_shown(cfg.bullmq_dir)}`); worker processes "
        "(`new Worker`, every option default but `concurrency`: 10, the figure the targets use, "
        "and 1, BullMQ's default) run the same no-op job (an async function returning null). "
        f"The client (a Node process) adds jobs with `addBulk` in batches of "
        f"{bullmq_bench.ENQUEUE_BATCH}, job options default (completed jobs are kept, as our "
        "results are); throughput ends when the completed set holds every job (ZCARD polled "
        "every 2 ms); latency awaits each job with `job.waitUntilFinished(QueueEvents)`. CPU "
        "per job is read by the client at the start and end of the timed part: its own, the "
        "worker processes' (`/proc/<pid>/stat`) and Redis's (`INFO cpu`).",
        f"Mixed (`bench/mixed.py`): {cfg.mixed_tasks} tasks, 9 in 10 sleeping "
        f"{mixed.SHORT_S * 1000:.0f} ms and 1 in 10 sleeping {mixed.LONG_S:g} s, shuffled with "
        f"seed {mixed.SEED}, submitted at once (ours: one `submit_many` to a pool; BullMQ: one "
        f"`addBulk`) to {mixed.WORKERS} worker processes x {mixed.SLOTS_PER_WORKER} slots; the "
        "makespan runs from the submit to the last result, against its lower bound: total "
        "work / slots, or the longest task if longer. Ours sleeps with the `python` pool's "
        "built-in `sleep`, BullMQ with `timers/promises` setTimeout, arq (defaults but "
        f"max_jobs={mixed.SLOTS_PER_WORKER}: it polls every 0.5 s) with `asyncio.sleep`.",
        f"Start-up: {cfg.startup_spawns} new local pools (1 worker process each) spawned in "
        "turn on a running orchestrator; each figure is the time from `spawn_pool` returning "
        "(it returns once the pool runs) to the result of one `execute_on_pool` no-op sent "
        "at once; the median is reported, with the slowest.",
        "Ours (`bench/ours.py`): an orchestrator process (`python -m orchestrator orchestrator`) "
        f"spawns local `python` pools (concurrency {c}, max_queue raised so no QueueFull) whose "
        "worker processes it starts; the client is `PoolManager` in the harness process. Direct "
        "= `submit_many(pool_id=...)` / `execute_on_pool`; routed = `submit_many()` / "
        "`route_task` through the orchestrator (least_loaded). The task is `{'call': 'noop'}`. "
        "All other settings are the defaults (heartbeat 1 s, supervision tick 0.5 s, worker "
        "XREADGROUP block 1 s, route batch 200).",
        f"Throughput: {cfg.tasks:,} tasks submitted in batches of {cfg.batch} while the workers "
        "run; tasks/s from the first submit to the last result, after "
        f"{cfg.warmup} untimed warm-up tasks; the median of {cfg.repeat} runs "
        "(arq defaults: 1 run).",
        f"Latency: {cfg.latency_round_trips:,} sequential round trips from one client, 1 worker "
        "process; p50/p99 of submit-to-result times.",
        f"Concurrency: {cfg.clients} clients (each its own `PoolManager` / reply stream) as "
        f"asyncio tasks in one process, {cfg.client_rounds} sequential round trips each, 1 "
        "worker process.",
        f"Backlog: {cfg.backlog_tasks:,} tasks queued on a pool with no worker; Redis memory per "
        "task = `INFO memory used_memory` delta / tasks (task hash + stream entry); then one "
        "worker starts (`scale` 0 -> 1) and the drain rate is timed from the first result to "
        "the last. Flatness = rate while the last fifth drained / rate of the first fifth.",
        f"Fan-out: the routed figure of 2 pools x 1 worker process, then {cfg.fanout_pools - 2} "
        f"more pools are spawned without workers and the same load is routed among "
        f"{cfg.fanout_pools} pools. Each routing batch reads every pool's backlog and checks "
        "every pool against every task; the idle pools are supervised every tick. 100 worker "
        "processes would not fit 2 cores (each is a Python process of ~45 MB and its own "
        "polling), and would measure process count rather than routing.",
        "Memory: peak RSS (`VmHWM`) of the largest worker process and of the orchestrator at "
        "the end of each throughput figure of the pools; the highest is reported.",
        "CPU µs/task: CPU time of each process group during the timed part "
        "(`/proc/<pid>/stat`, Redis `INFO cpu`) divided by tasks; `client` is the harness "
        "process (or arq's client process). On 2 cores the busiest group bounds throughput.",
    ]
