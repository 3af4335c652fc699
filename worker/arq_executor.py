"""The executor of `arq` pools: each task becomes an arq job, run by the team's own arq workers.

A bridge is a normal worker of the pool (this venv): it reads the pool's stream, marks tasks
running, records results and retries like any worker. Its executor hands each task to a child
process running `worker/arq_child.py` with the python of arq's own virtual environment (arq
pins redis-py below 6; the project's redis-py is never constrained by it), over JSON lines:
the child enqueues the job on the pool's arq Redis and queue and reports how it ended.

The job id is the task id plus the attempt (`t-...-a2`): a bridge that re-submits the same
attempt (its drain handed the task back) finds the job and waits for it instead of enqueueing
it twice, and a task whose bridge died is retried by waiting for its earlier job while that is
still queued or running in arq, or by taking its result if it succeeded. A task's cancel and
its timeout abort the job (arq's `Job.abort`: the arq worker needs `allow_abort_jobs=True`);
a drain does not (the job goes on; the next bridge adopts it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from shared.arq_options import ArqOptions
from shared.config import Settings
from shared.errors import ExecutorError
from shared.models import PoolSpec, TaskSpec
from worker.executors import HAND_BACK, TASK_ATTEMPT, Outcome
from worker.executors import _checked_result as checked_result  # the same rules as python pools'
from worker.executors import _wrong_kind as wrong_kind

log = logging.getLogger("mahavishnu.worker.arq")

CHILD_SCRIPT = Path(__file__).with_name("arq_child.py")
ARQ_VENV = ".venv-arq"
READY_TIMEOUT = 60.0  # seconds for the child to import arq and reach the arq Redis
CLOSE_TIMEOUT = 5.0
LINE_LIMIT = 64 * 1024 * 1024
STDERR_KEPT = 5  # the child's last stderr lines, quoted when it fails

RETRIED = {"failed", "retries_exhausted", "expired", "not_found", "bridge_died"}
"""Job outcomes that are a failed attempt (retried up to the task's max_attempts)."""


def arq_python(settings: Settings | None) -> Path:
    """The python of arq's venv: the `arq_python` setting, else `.venv-arq/bin/python` in the
    current folder or in this checkout. ExecutorError saying how to make one if none exists."""
    if settings is not None and settings.arq_python is not None:
        candidates = [settings.arq_python]
    else:
        checkout = Path(__file__).resolve().parent.parent
        candidates = [Path.cwd() / ARQ_VENV / "bin" / "python"]
        candidates += [checkout / ARQ_VENV / "bin" / "python"]
    for python in candidates:
        if python.is_file():
            return python
    tried = " or ".join(str(p) for p in dict.fromkeys(candidates))
    raise ExecutorError(
        f"arq pools need arq's own virtual environment, and there is no python at {tried}: "
        "run `make arq-venv`, or point the arq_python setting (MAHAVISHNU_ARQ_PYTHON) at the "
        "python of a venv with `pip install 'mahavishnu-pools[arq]'`"
    )


class ArqExecutor:
    """Runs a pool's tasks as arq jobs through one child process in arq's venv."""

    def __init__(self, spec: PoolSpec, settings: Settings | None = None) -> None:
        self._spec = spec
        self._options = ArqOptions.model_validate(spec.options)
        self._python = arq_python(settings)
        self._proc: asyncio.subprocess.Process | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_KEPT)
        self._lock: asyncio.Lock | None = None

    @property
    def label(self) -> str:
        """How errors name the pool."""
        return f"arq pool {self._spec.name!r} ({self._spec.id})"

    @property
    def alive(self) -> bool:
        """Whether the child process runs."""
        return self._proc is not None and self._proc.returncode is None

    async def open(self) -> None:
        """Start the child if it does not run; ExecutorError if arq or its Redis is unusable."""
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if not self.alive:
                await self._start()

    async def _start(self) -> None:
        options = self._options
        argv = [str(self._python), str(CHILD_SCRIPT), "--redis-url", options.redis_url]
        argv += ["--queue", options.queue, "--poll", repr(options.poll_interval)]
        if options.password_env:
            argv += ["--password-env", options.password_env]
        self._stderr.clear()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=LINE_LIMIT,
            )
        except OSError as exc:
            raise ExecutorError(f"{self.label}: cannot start {self._python}: {exc}") from None
        assert proc.stdout is not None and proc.stderr is not None
        errors = asyncio.create_task(self._pump_stderr(proc.stderr))
        try:
            first = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)
        except TimeoutError:
            first = b""
        ready = _parse(first)
        if ready.get("event") != "ready":
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            await errors
            why = ready.get("error") or self._exit_reason(proc.returncode)
            raise ExecutorError(f"{self.label}: {why}")
        log.info(
            "%s: arq bridge up (pid %d, arq %s, redis-py %s) on %s",
            self.label,
            proc.pid,
            ready.get("arq"),
            ready.get("redis_py"),
            options.where,
        )
        self._proc = proc
        self._pumps = [errors, asyncio.create_task(self._pump_replies(proc))]

    def _exit_reason(self, code: int | None) -> str:
        tail = " | ".join(self._stderr) or "no output"
        return (
            f"the arq bridge ({self._python} {CHILD_SCRIPT.name}) exited with code {code} "
            f"before it was ready (is arq installed there? `make arq-venv`): {tail}"
        )

    async def _pump_stderr(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode("utf-8", "replace").rstrip()
            self._stderr.append(text[:500])
            log.warning("%s", text)

    async def _pump_replies(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            reply = _parse(line)
            waiter = self._waiters.pop(str(reply.get("job")), None)
            if reply.get("event") == "done" and waiter is not None and not waiter.done():
                waiter.set_result(reply)
        code = await proc.wait()
        error = f"the arq bridge process exited (code {code}): " + " | ".join(self._stderr)
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_result({"state": "bridge_died", "error": error})
        self._waiters.clear()

    def _send(self, message: dict[str, Any]) -> None:
        if self._proc is None or self._proc.stdin is None or not self.alive:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            self._proc.stdin.write(json.dumps(message).encode() + b"\n")

    async def run(self, task: TaskSpec) -> Outcome:
        """Run the task as an arq job and map how the job ended."""
        if task.call is not None:
            name, args, kwargs = task.call, list(task.args), dict(task.kwargs)
        elif task.prompt is not None:
            name, args, kwargs = self._options.function, [task.prompt], {}
        else:
            return wrong_kind(self._spec, task, "'call' and 'prompt'")
        if name not in self._options.names:
            runs = ", ".join(self._options.names)
            error = f"{self.label} has no arq function {name!r}; it runs: {runs}"
            return Outcome(None, error, retryable=False)
        reserved = sorted(k for k in kwargs if k.startswith("_"))
        if reserved:
            error = f"kwargs {', '.join(reserved)}: names starting with '_' are arq's own options"
            return Outcome(None, error, retryable=False)
        attempt = TASK_ATTEMPT.get()
        job = f"{task.id}-a{attempt}"
        previous = [f"{task.id}-a{n}" for n in range(1, attempt)]
        request = {"op": "run", "job": job, "function": name, "args": args, "kwargs": kwargs}
        try:
            line = json.dumps({**request, "previous": previous}).encode() + b"\n"
        except (TypeError, ValueError) as exc:
            return Outcome(None, f"arq jobs take JSON arguments: {exc}", retryable=False)
        try:
            await self.open()
        except ExecutorError as exc:  # e.g. the arq Redis is away: a failed attempt
            return Outcome(None, str(exc))
        assert self._proc is not None and self._proc.stdin is not None
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[job] = waiter
        try:
            self._proc.stdin.write(line)
            await self._proc.stdin.drain()
            reply = await waiter
        except asyncio.CancelledError as exc:
            # a drain hands the task back with this attempt: its job goes on and is adopted
            self._send({"op": "forget" if HAND_BACK in exc.args else "abort", "job": job})
            raise
        except (ConnectionError, RuntimeError) as exc:  # the child went away meanwhile
            reply = {"state": "bridge_died", "error": f"the arq bridge process is gone: {exc}"}
        finally:
            self._waiters.pop(job, None)
        return self._outcome(job, name, reply)

    def _outcome(self, job: str, name: str, reply: dict[str, Any]) -> Outcome:
        state = str(reply.get("state"))
        ran_as = str(reply.get("ran_as") or job)
        error = str(reply.get("error") or "")
        if state == "complete":
            return checked_result(name, reply.get("result"))
        if state == "unknown_function":
            return Outcome(
                None,
                f"{self.label}: no arq worker on {self._options.where} has the function "
                f"{name!r} (arq: {error})",
                retryable=False,
            )
        if state == "timeout":
            retry = self._options.on_job_timeout == "retry"
            return Outcome(None, f"arq job {ran_as} {error}", retryable=retry)
        if state == "aborted":
            return Outcome(None, f"arq job {ran_as} was aborted in arq", retryable=False)
        if state == "retries_exhausted":
            error = f"arq gave up on it ({error}; arq's max_tries)"
        if state in RETRIED:
            return Outcome(None, f"arq job {ran_as}: {error}")
        return Outcome(None, f"arq job {ran_as}: {error or state}", retryable=False)

    async def aclose(self) -> None:
        """Close the child's stdin (it exits at end of input); kill it if it lingers."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), CLOSE_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._pumps:
            await asyncio.wait(self._pumps, timeout=CLOSE_TIMEOUT)
        for pump in self._pumps:
            pump.cancel()


def _parse(line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line) if line.strip() else {}
    except ValueError:
        return {"event": "garbled", "error": f"unreadable reply {line[:200]!r}"}
    return value if isinstance(value, dict) else {}


__all__ = ["ArqExecutor", "arq_python"]
