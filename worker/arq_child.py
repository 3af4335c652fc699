"""The arq side of an arq pool's bridge: a small process that runs in arq's own virtual environment.

arq pins redis-py below 6, so it never enters the project's environment: the bridge worker
(`worker/arq_executor.py`) starts this file with the python of arq's venv (`make arq-venv`) as
`python arq_child.py --redis-url URL --queue Q --poll S [--password-env NAME]`. It imports only
the standard library and arq (with the redis-py arq brings), never this project, and talks JSON
lines over its stdin and stdout:

in:  {"op": "run", "job": J, "function": F, "args": [...], "kwargs": {...}, "previous": [...]}
     {"op": "abort", "job": J}    ask arq to abort it (arq's `Job.abort`) and stop waiting
     {"op": "forget", "job": J}   stop waiting; the job goes on in arq (a later bridge adopts it)
out: {"event": "ready", "arq": V, "redis_py": V}, or {"event": "fatal", "error": E} and exit 2
     {"event": "done", "job": J, "ran_as": J2, "state": S, "result": R, "error": E, "tries": N}

`run` enqueues J (`enqueue_job(F, *args, _job_id=J, _queue_name=Q, **kwargs)`). A job that
exists already is not enqueued twice (arq refuses a used `_job_id`): it is waited for. Before
that, `previous` (the job ids of the task's earlier attempts) are looked at: one still queued or
running in arq (its bridge died) is waited for instead, one that succeeded is reported at once,
so a task whose bridge died is not run again. A job is waited for by polling its result key and
its place in the queue, in one MULTI per `--poll` for every job waited on; an arq worker that
dies leaves the job queued, and arq runs it again once its in-progress key expires.

States (S): complete, failed, timeout (arq's job_timeout), aborted, unknown_function (no arq
worker has F), retries_exhausted (arq's max_tries), expired (the job's expiry passed before a
worker took it), not_found (neither queued nor a result: the result expired or was not kept),
unsendable (a result that is not JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import abort_jobs_ss, result_key_prefix
from arq.jobs import deserialize_result
from arq.version import VERSION as ARQ_VERSION
from arq.worker import JobExecutionFailed
from redis import __version__ as REDIS_PY_VERSION
from redis.exceptions import RedisError

LINE_LIMIT = 64 * 1024 * 1024
MAX_RESULT_CHARS = 16 * 1024 * 1024  # a task's output is bounded far below this anyway
POLL_CHUNK = 500  # jobs looked at per MULTI
ENQUEUE_BACKOFF_MAX = 2.0


def send(**fields: Any) -> None:
    """Write one JSON line to the bridge worker."""
    sys.stdout.write(json.dumps(fields, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def note(text: str) -> None:
    """A line for the bridge worker's log (our stderr is its log file)."""
    print(f"arq bridge: {text}", file=sys.stderr, flush=True)


def _failure(exc: BaseException) -> tuple[str, str]:
    """The state and error of a failed arq job from the exception arq stored."""
    text = str(exc)
    if isinstance(exc, asyncio.CancelledError):
        return "aborted", "aborted in arq"
    if isinstance(exc, TimeoutError):  # what asyncio.wait_for raises in arq's worker
        return "timeout", "timed out in arq (the arq worker's job_timeout)"
    if isinstance(exc, JobExecutionFailed):
        if text.startswith("function ") and text.endswith(" not found"):
            return "unknown_function", text
        if text.startswith("max ") and text.endswith("retries exceeded"):
            return "retries_exhausted", text
        if text == "job expired":
            return "expired", text
    return "failed", f"{type(exc).__name__}: {text}".removesuffix(": ")


class Bridge:
    """Enqueues jobs on one arq queue and reports how they end."""

    def __init__(self, redis: ArqRedis, queue: str, poll: float) -> None:
        self.redis = redis
        self.queue = queue
        self.poll = poll
        self.waiting: dict[str, str] = {}  # arq job id looked at -> the job id it answers for
        self.dropped: set[str] = set()  # aborted or forgotten before they were enqueued
        self.tasks: set[asyncio.Task[None]] = set()
        self._outage = False

    def handle(self, message: dict[str, Any]) -> None:
        """Act on one line from the bridge worker."""
        op, job = message.get("op"), str(message.get("job", ""))
        if op == "run":
            self.dropped.discard(job)
            task = asyncio.create_task(self.run(job, message))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif op in ("abort", "forget"):
            self.dropped.add(job)
            watched = [j for j, answers in self.waiting.items() if answers == job]
            for arq_job in watched:
                del self.waiting[arq_job]
            if op == "abort":
                task = asyncio.create_task(self.abort([*watched, job]))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        else:
            note(f"unknown request {message!r:.200}")

    async def run(self, job: str, message: dict[str, Any]) -> None:
        for earlier in message.get("previous", []):
            if await self.adopt(str(earlier), job):
                return
        backoff = 0.1
        while job not in self.dropped:
            try:
                await self.redis.enqueue_job(
                    message["function"],
                    *message.get("args", []),
                    _job_id=job,
                    _queue_name=self.queue,
                    **message.get("kwargs", {}),
                )
                break
            except (RedisError, OSError) as exc:  # the arq Redis is away: keep trying
                note(f"enqueueing {job} failed ({exc}); retrying")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, ENQUEUE_BACKOFF_MAX)
        if job not in self.dropped:
            self.waiting[job] = job

    async def adopt(self, earlier: str, job: str) -> bool:
        """Whether an earlier attempt's job stands for `job`: still queued or running in arq
        (waited for), or succeeded (reported now)."""
        try:
            raw, score = await self._look(earlier)
        except (RedisError, OSError):
            return False
        if raw is not None:
            try:
                info = deserialize_result(raw)
            except Exception:
                return False
            if not info.success:
                return False
            self.report(job, earlier, raw)
            return True
        if score is not None:
            note(f"job {earlier} of an earlier attempt is still in arq: waiting for it")
            self.waiting[earlier] = job
            return True
        return False

    async def _look(self, job: str) -> tuple[bytes | None, float | None]:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(result_key_prefix + job)
            pipe.zscore(self.queue, job)
            raw, score = await pipe.execute()
        return raw, score

    async def abort(self, jobs: list[str]) -> None:
        """What arq's `Job.abort` does first: put the jobs in arq's abort set (an arq worker
        started with allow_abort_jobs cancels them, running or not started yet)."""
        now = int(time.time() * 1000)
        try:
            await self.redis.zadd(abort_jobs_ss, dict.fromkeys(jobs, now))
        except (RedisError, OSError) as exc:
            note(f"could not abort {', '.join(jobs)}: {exc}")

    async def watch(self) -> None:
        """Report every job waited on that has ended."""
        while True:
            await asyncio.sleep(self.poll)
            jobs = list(self.waiting)
            for start in range(0, len(jobs), POLL_CHUNK):
                chunk = jobs[start : start + POLL_CHUNK]
                try:
                    async with self.redis.pipeline(transaction=True) as pipe:
                        for job in chunk:
                            pipe.get(result_key_prefix + job)
                            pipe.zscore(self.queue, job)
                        replies = await pipe.execute()
                except (RedisError, OSError) as exc:
                    if not self._outage:
                        note(f"the arq Redis does not answer ({exc}); waiting for it")
                    self._outage = True
                    break
                if self._outage:
                    note("the arq Redis answers again")
                    self._outage = False
                for job, raw, score in zip(chunk, replies[::2], replies[1::2], strict=True):
                    answers = self.waiting.get(job)
                    if answers is None or (raw is None and score is not None):
                        continue
                    del self.waiting[job]
                    if raw is not None:
                        self.report(answers, job, raw)
                    else:
                        error = (
                            "neither queued nor a result in arq (its result expired, or the "
                            "arq worker keeps none: keep_result=0)"
                        )
                        send(event="done", job=answers, ran_as=job, state="not_found", error=error)

    def report(self, answers: str, job: str, raw: bytes) -> None:
        """Send how a job ended, from its stored result."""
        try:
            info = deserialize_result(raw)
        except Exception as exc:
            error = f"arq's result cannot be read here: {exc}"
            send(event="done", job=answers, ran_as=job, state="failed", error=error)
            return
        done = {"event": "done", "job": answers, "ran_as": job, "tries": info.job_try}
        if info.success:
            kind = type(info.result).__name__
            try:
                size = len(json.dumps(info.result))
            except (TypeError, ValueError) as exc:
                error = f"its result ({kind}) cannot be sent as JSON: {exc}"
                send(**done, state="unsendable", error=error)
                return
            if size > MAX_RESULT_CHARS:
                error = f"its result ({kind}) has {size} characters as JSON"
                send(**done, state="unsendable", error=f"{error}; at most {MAX_RESULT_CHARS}")
                return
            send(**done, state="complete", result=info.result)
            return
        state, error = _failure(info.result)
        send(**done, state=state, error=error)


async def read_lines(bridge: Bridge) -> None:
    """Hand each line of stdin to the bridge; return at end of input (the worker is gone)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        try:
            message = json.loads(line)
        except ValueError:
            note(f"unreadable request {line[:200]!r}")
            continue
        bridge.handle(message)


async def main(args: argparse.Namespace) -> int:
    settings = RedisSettings.from_dsn(args.redis_url)
    settings.conn_retries = 1
    settings.conn_retry_delay = 0.5
    if args.password_env:
        password = os.environ.get(args.password_env)
        if password is None:
            send(event="fatal", error=f"environment variable {args.password_env} is not set")
            return 2
        settings.password = password
    where = f"{settings.host}:{settings.port}/{settings.database}"
    try:
        redis = await create_pool(settings, default_queue_name=args.queue)
    except Exception as exc:
        send(event="fatal", error=f"the arq Redis at {where} is unreachable: {exc}")
        return 2
    send(event="ready", arq=ARQ_VERSION, redis_py=REDIS_PY_VERSION)
    bridge = Bridge(redis, args.queue, args.poll)
    watcher = asyncio.create_task(bridge.watch())
    try:
        await read_lines(bridge)
    finally:
        watcher.cancel()
        await redis.aclose()
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="arq_child.py", description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--poll", type=float, default=0.05)
    parser.add_argument("--password-env", default=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse(sys.argv[1:]))))
