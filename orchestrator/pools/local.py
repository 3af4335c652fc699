"""Worker OS processes of `local` pools: start, watch, restart and stop them on this host.

Each worker is `python -m worker --pool P --worker-id W --managed-by O`, started with this
orchestrator's settings in its environment and its output in `<log_dir>/<pool>/<worker>.log`.
The supervisor learns of an exit at once (a watcher per process wakes the supervision loop), so
a worker that dies is replaced at once and its entries are taken back without waiting for its
heartbeat to expire. Repeated quick crashes are restarted with exponential backoff; a worker that
keeps failing before it ever heartbeats makes the pool `failed`, with the last line of its log
as the reason. A worker asked to stop that is still running past its drain deadline is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.pools.base import PoolBackend, Sweep
from shared.config import WORKER_METRICS_DIR_ENV, Settings, settings_env
from shared.errors import ExecutorError
from shared.metrics import current as current_metrics
from shared.models import PoolSpec
from worker.executors import build_executor

log = logging.getLogger("mahavishnu.orchestrator.local")

FAILED_STARTS_BEFORE_FAILED = 3
QUICK_CRASH = 30.0  # a process that exits within this many seconds of starting adds to a streak
RESTART_BACKOFF_BASE, RESTART_BACKOFF_MAX = 0.5, 30.0


@dataclass
class WorkerProcess:
    """One worker process this orchestrator started."""

    worker_id: str
    process: asyncio.subprocess.Process
    started_at: float
    log_path: Path
    stopping: bool = False
    stop_requested_at: float = 0.0  # monotonic time of the SIGTERM
    killed: bool = False

    @property
    def alive(self) -> bool:
        """Whether the process has not exited yet."""
        return self.process.returncode is None


@dataclass
class LocalPool:
    """The processes of one local pool on this host."""

    pool_id: str
    processes: dict[str, WorkerProcess] = field(default_factory=dict)
    serial: int = 0
    failed_starts: int = 0
    restart_after: float = 0.0
    ever_heartbeat: bool = False
    last_error: str = ""
    crash_streak: int = 0


class LocalBackend(PoolBackend):
    """The `local` backend: worker processes on this host for the pools this orchestrator
    holds the leases of."""

    def __init__(
        self,
        settings: Settings,
        log_dir: Path,
        owner_id: str = "",
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.owner_id = owner_id
        self.on_exit = on_exit  # called when any worker process exits
        self.pools: dict[str, LocalPool] = {}
        self._env = {**os.environ, **settings_env(settings)}
        # its workers share this host: the orchestrator's metrics port is not theirs; when it
        # serves /metrics they write their counts to a folder it reads (shared.metrics.snapshots)
        self._env["MAHAVISHNU_METRICS_PORT"] = "0"
        self._env.pop(WORKER_METRICS_DIR_ENV, None)
        metrics = current_metrics()
        if metrics is not None:
            folder = log_dir / "metrics" / (owner_id or f"pid{os.getpid()}")
            metrics.observer.add_folder(folder)
            self._env[WORKER_METRICS_DIR_ENV] = str(folder)
        self._watchers: set[asyncio.Task[None]] = set()

    def pool(self, pool_id: str) -> LocalPool:
        """The process set of a pool (created on first use)."""
        return self.pools.setdefault(pool_id, LocalPool(pool_id))

    async def start_worker(self, pool_id: str, concurrency: int) -> WorkerProcess:
        """Start one worker process for the pool."""
        state = self.pool(pool_id)
        state.serial += 1
        worker_id = f"{pool_id}-w{state.serial}-{os.urandom(2).hex()}"
        folder = self.log_dir / pool_id
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / f"{worker_id}.log"
        with log_path.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "worker",
                "--pool",
                pool_id,
                "--worker-id",
                worker_id,
                "--concurrency",
                str(concurrency),
                "--managed-by",
                self.owner_id,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=self._env,
                start_new_session=True,
            )
        proc = WorkerProcess(worker_id, process, time.time(), log_path)
        state.processes[worker_id] = proc
        watcher = asyncio.create_task(self._watch(proc), name=f"watch-{worker_id}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        log.info("started worker %s (pid %d) for pool %s", worker_id, process.pid, pool_id)
        return proc

    async def _watch(self, proc: WorkerProcess) -> None:
        await proc.process.wait()
        if self.on_exit is not None:
            self.on_exit()

    def reap(self, pool_id: str, live_heartbeats: set[str]) -> tuple[list[str], str]:
        """Forget exited processes of a pool.

        Returns the worker ids of every process that exited (their heartbeats are stale from
        now on) and, if any exited without being asked, the reason to report.
        """
        state = self.pool(pool_id)
        if live_heartbeats & set(state.processes):
            state.ever_heartbeat = True
            state.failed_starts = 0
        exited: list[str] = []
        reason = ""
        for worker_id, proc in list(state.processes.items()):
            if proc.alive:
                continue
            del state.processes[worker_id]
            exited.append(worker_id)
            code = proc.process.returncode
            if proc.stopping and not proc.killed:
                # asked to stop: a clean exit, or SIGTERM's default action when it came before
                # the worker had installed its handler (still importing), is no crash
                if code not in (0, -signal.SIGTERM):
                    reason = f"worker {worker_id} exited with code {code} while draining"
                    log.warning("%s: %s", reason, _last_line(proc.log_path))
                continue
            if proc.killed:
                reason = f"worker {worker_id} did not drain in time and was killed"
                if proc.stopping:  # it was going anyway: no crash to back off from
                    continue
            else:
                last = _last_line(proc.log_path)
                state.last_error = last or f"exit code {code}"
                reason = f"worker {worker_id} exited with code {code}: {state.last_error}"
            if worker_id not in live_heartbeats and not state.ever_heartbeat:
                state.failed_starts += 1
            quick = time.time() - proc.started_at < QUICK_CRASH
            state.crash_streak = state.crash_streak + 1 if quick else 1
            delay = 0.0
            if state.crash_streak > 1:  # the first crash is restarted at once
                exponent = min(state.crash_streak - 2, 8)
                delay = min(RESTART_BACKOFF_MAX, RESTART_BACKOFF_BASE * 2**exponent)
            state.restart_after = time.monotonic() + delay
            log.warning("%s (restart in %.1fs)", reason, delay)
        return exited, reason

    def overdue(self, pool_id: str, limit: float) -> list[WorkerProcess]:
        """Kill (SIGKILL, whole process group) workers still running `limit` s after SIGTERM."""
        now = time.monotonic()
        late = [
            p
            for p in self.pool(pool_id).processes.values()
            if p.alive and p.stopping and not p.killed and now - p.stop_requested_at > limit
        ]
        for proc in late:
            log.error(
                "worker %s (pid %d) did not drain within %.0fs: killing it",
                proc.worker_id,
                proc.process.pid,
                limit,
            )
            proc.killed = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.process.pid, signal.SIGKILL)
        return late

    def managed(self, pool_id: str) -> set[str]:
        """Worker ids of every process of the pool this supervisor started and still has."""
        return set(self.pool(pool_id).processes)

    def may_start(self, pool_id: str) -> bool:
        """Whether the restart backoff of the pool has passed."""
        return time.monotonic() >= self.pool(pool_id).restart_after

    def start_failed(self, pool_id: str) -> bool:
        """Whether the pool's workers keep failing before they ever heartbeat."""
        return self.pool(pool_id).failed_starts >= FAILED_STARTS_BEFORE_FAILED

    def alive(self, pool_id: str) -> list[WorkerProcess]:
        """The pool's running processes that were not asked to stop."""
        return [p for p in self.pool(pool_id).processes.values() if p.alive and not p.stopping]

    def stop_worker(self, proc: WorkerProcess) -> None:
        """Ask one worker to drain and exit (SIGTERM)."""
        proc.stopping = True
        proc.stop_requested_at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            proc.process.send_signal(signal.SIGTERM)

    def stop_pool(self, pool_id: str) -> None:
        """Ask every worker of a pool to drain."""
        for proc in self.pool(pool_id).processes.values():
            if proc.alive and not proc.stopping:
                self.stop_worker(proc)

    def kill_pool(self, pool_id: str) -> None:
        """SIGKILL the process groups of a pool's workers that did not drain in time.

        The processes stay listed, so `stop_all` still reaps them.
        """
        for proc in self.pool(pool_id).processes.values():
            if proc.alive:
                log.warning("worker %s did not drain in time: killing it", proc.worker_id)
                proc.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.process.pid, signal.SIGKILL)

    def running(self, pool_id: str) -> int:
        """How many processes of the pool have not exited."""
        return sum(1 for p in self.pool(pool_id).processes.values() if p.alive)

    async def stop_all(self, grace: float) -> None:
        """Drain every worker; kill the process groups of those still running after `grace`."""
        procs = [p for s in self.pools.values() for p in s.processes.values() if p.alive]
        for proc in procs:
            if not proc.stopping:
                self.stop_worker(proc)
        if not procs:
            return
        waits = [asyncio.create_task(p.process.wait()) for p in procs]
        _, pending = await asyncio.wait(waits, timeout=grace)
        for proc in procs:
            if proc.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.process.pid, signal.SIGKILL)
        if pending:
            await asyncio.wait(pending, timeout=5)
        for w in pending:
            w.cancel()
        for watcher in list(self._watchers):
            watcher.cancel()

    # ------------------------------------------------------------ PoolBackend

    def problem(self, spec: PoolSpec) -> str:
        """Why this host cannot run the pool's executor ('' if it can)."""
        try:
            build_executor(spec)
        except ExecutorError as exc:
            return str(exc)
        return ""

    async def reconcile(self, spec: PoolSpec, target: int) -> None:
        """Start processes (past the restart backoff, at most 8 a tick) or stop the newest."""
        mine = self.alive(spec.id)  # started by us, not asked to stop, not exited
        missing = target - len(mine)
        if missing > 0 and self.may_start(spec.id):
            for _ in range(min(missing, 8)):
                await self.start_worker(spec.id, spec.concurrency)
        elif missing < 0:
            for proc in sorted(mine, key=lambda p: p.started_at, reverse=True)[:-missing]:
                self.stop_worker(proc)

    def sweep(self, pool_id: str, live: set[str], drain_limit: float) -> Sweep:
        """Kill processes draining past `drain_limit`, forget exited ones, and tell whether
        the pool's workers keep dying before their first heartbeat."""
        killed = self.overdue(pool_id, drain_limit)
        exited, reason = self.reap(pool_id, live)
        if killed and not reason:
            names = ", ".join(p.worker_id for p in killed)
            reason = f"killed {names}: still draining past the drain deadline"
        failed = ""
        if self.start_failed(pool_id):
            failed = f"workers fail to start: {self.pool(pool_id).last_error}"
        return Sweep(exited=exited, restart_reason=reason, failed=failed)

    def active(self, pool_id: str) -> set[str]:
        """Worker ids of the processes neither exited nor asked to stop."""
        return {p.worker_id for p in self.alive(pool_id)}

    def stop(self, pool_id: str) -> None:
        self.stop_pool(pool_id)

    def kill(self, pool_id: str) -> None:
        self.kill_pool(pool_id)

    def forget(self, pool_id: str) -> None:
        if not self.running(pool_id):
            self.pools.pop(pool_id, None)

    def describe(self, pool_id: str) -> dict[str, Any]:
        """The pool's processes on this host: pid, start time, whether asked to stop, log."""
        state = self.pool(pool_id)
        return {
            "backend": "local",
            "processes": [
                {
                    "worker_id": p.worker_id,
                    "pid": p.process.pid,
                    "started_at": p.started_at,
                    "stopping": p.stopping,
                    "exit_code": p.process.returncode,
                    "log": str(p.log_path),
                }
                for p in state.processes.values()
            ],
            "crash_streak": state.crash_streak,
            "last_error": state.last_error,
        }

    def logs(self, pool_id: str, worker_id: str, tail: int) -> list[str]:
        proc = self.pool(pool_id).processes.get(worker_id)
        path = proc.log_path if proc is not None else self.log_dir / pool_id / f"{worker_id}.log"
        return _tail(path, tail)


def _tail(path: Path, lines: int) -> list[str]:
    """The last `lines` non-empty lines of a log file ([] if it cannot be read)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * max(lines, 1)))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]


def _last_line(path: Path) -> str:
    found = _tail(path, 1)
    return found[0][:500] if found else ""
