"""The data plane: one worker process consumes one pool's stream and runs its tasks.

The loop reads at most as many entries as it has free slots (`XREADGROUP COUNT = free`), so it
never holds work it cannot start. A batch read is marked running in one script; finished tasks
are flushed in batches (`shared.finals.finalize_deferring_ack`): the guarded result writes,
memory records and counters in one round trip, then replies, events, shares and retries in a
second; the XACK + XDEL of the batch's entries ride in the next flush's first round trip, or go
alone after `ACK_LINGER`. A heartbeat hash with a TTL tells the orchestrator the worker
is alive; an entry is never taken from a live worker merely because it is old.

On SIGTERM (or when its pool starts closing) the worker drains: it stops reading, lets in-flight
tasks finish within the grace period, hands back what is left, leaves its consumer group and
exits. A second SIGTERM hands back at once. Whatever its tasks or Redis do, a drain ends by
itself: past `drain_deadline` the process exits (its entries are then taken back like a dead
worker's), and its supervisor kills it if even that fails.

The background loops stop on an event, never by cancellation: redis-py can swallow a cancel
that lands inside a pipeline's execute (seen with redis-py 8.1 on Python 3.11, about one cancel
in 200), which left the heartbeat loop running forever and the worker "draining" for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from redis.exceptions import RedisError

from shared.aio import stop_loops, wait_any
from shared.codec import (
    Heartbeat,
    ResultShare,
    StatusUpdate,
    TaskDelegate,
    decode,
    encode,
)
from shared.config import WORKER_METRICS_DIR_ENV, Settings
from shared.connection import (
    TRANSIENT_ERRORS,
    Pipeline,
    Redis,
    ack_and_delete,
    connect,
    ensure_group,
    read_own_pending,
)
from shared.errors import MalformedMessage, PoolNotFound, PoolUnavailable
from shared.finals import (
    FinalResult,
    PendingAck,
    acknowledge_pending,
    finalize_deferring_ack,
    malformed_entry_record,
    queue_dead_letter,
    queue_memory_record,
)
from shared.hooks import HOOKS
from shared.keys import WORKER_GROUP
from shared.logs import bind as bind_log_context
from shared.logs import set_task as set_task_log_context
from shared.logs import task_fields
from shared.metrics import install as install_metrics
from shared.metrics import installed as installed_metrics
from shared.metrics.snapshots import SnapshotWriter
from shared.models import ACCEPTING_STATUSES, PoolSpec, PoolStatus, TaskResult, TaskStatus, new_id
from shared.replies import Entry, decode_hash, flatten_read, queued, text
from shared.retries import dead_letter_reason, queue_retry, with_line
from shared.scripts import START_ANNOUNCE, START_CANCELLED, START_RUN, START_SKIP, Scripts
from shared.task_state import iso_time
from worker.executors import (
    HAND_BACK,
    TASK_ATTEMPT,
    Executor,
    Outcome,
    build_executor,
    open_executor,
)
from worker.progress import ProgressPublisher, set_output_sink

log = logging.getLogger("mahavishnu.worker")

HEARTBEAT_EVENT_EVERY = 10.0
DEADLINE_TICK = 0.05  # timeouts are enforced to within this many seconds
DRAIN_EXIT_MARGIN = 10.0  # seconds past drain_grace for handing back and writing results
EXIT_DRAIN_OVERDUE = 3  # exit code of a worker whose drain did not end in time
LOOP_STOP_WAIT = 5.0  # seconds a background loop gets to notice its stop event
ACK_LINGER = 0.005
"""Seconds a flush's deferred acknowledgement (`PendingAck`: results marked announced, XACK +
XDEL of the entries) waits for the next flush to carry it in its first round trip; then it is
sent alone. Under load the next flush comes sooner, and a flush is two round trips instead of
three; idle, the entries are acknowledged this much later. A worker that dies meanwhile leaves
what a writer dying after announcing leaves, which its entries' next handler repairs; one that
stops sends it before leaving its group."""


def heartbeat_kind(managed_by: str) -> str:
    """The `kind` a worker names in its heartbeat (`mahavishnu top`): pod inside Kubernetes,
    local when an orchestrator started it, external when started by hand."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return "pod"
    return "local" if managed_by else "external"


def drain_deadline(settings: Settings) -> float:
    """Seconds from a stop request after which a worker exits whatever it is doing."""
    return settings.drain_grace + DRAIN_EXIT_MARGIN


@dataclass
class _Running:
    entry_id: bytes
    message: TaskDelegate
    started_at: float
    deadline: float  # loop time at which the task times out
    task: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    timed_out: bool = False
    handing_back: bool = False  # cancelled by a drain: returned to the stream, no result


@dataclass
class _Done:
    running: _Running
    outcome: Outcome
    finished_at: float
    cancelled: bool = False


@dataclass
class _DeadLetter:
    entry_id: bytes
    reason: str
    fields: dict[bytes, bytes] = field(default_factory=dict)


class Worker:
    """Consume one pool's stream and run its tasks with the pool's executor."""

    def __init__(
        self,
        settings: Settings,
        pool_id: str,
        *,
        concurrency: int | None = None,
        worker_id: str | None = None,
        burst: bool = False,
        managed_by: str = "",
        exit_when_overdue: bool = False,
    ) -> None:
        self.settings = settings
        self.managed_by = managed_by  # the orchestrator that started this process, if any
        self._kind = heartbeat_kind(managed_by)
        self._exit_when_overdue = exit_when_overdue  # a worker process: yes; in-process: no
        self.keys = settings.keys
        self.pool_id = pool_id
        self.worker_id = worker_id or new_id("w")
        self.burst = burst
        self._concurrency_override = concurrency
        self.concurrency = concurrency or settings.worker_concurrency
        self.redis: Redis = connect(settings, retries=0)
        self._reader: Redis = connect(settings, blocking=True, retries=0)
        self._scripts = Scripts(self.redis)
        self.spec: PoolSpec | None = None
        self._executor: Executor | None = None
        self._progress: ProgressPublisher | None = None  # made in `start`, on the running loop
        self._running: dict[bytes, _Running] = {}
        self._done: list[_Done] = []
        self._dead: list[_DeadLetter] = []
        self._skipped: list[bytes] = []
        self._unannounced: list[tuple[bytes, str]] = []  # (entry, task) final, not announced
        # a batch whose write failed, retried as it was before anything newer
        self._unwritten: (
            tuple[list[_Done], list[_DeadLetter], list[bytes], list[tuple[bytes, str]]] | None
        ) = None
        # the last flush's acknowledgement, sent with the next flush or alone (`ACK_LINGER`);
        # replaced only once a flush succeeded, so a retried flush sends it again
        self._pending_ack: PendingAck | None = None
        self._flush_wanted = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._finishing = asyncio.Event()  # reading and draining are over: flush and exit
        self._hurry = asyncio.Event()  # a second stop request: hand back without waiting
        self._loops_done = asyncio.Event()  # tells the heartbeat and deadline loops to end
        self._stop_requested_at: float | None = None
        self._pool_gone_since: float | None = None
        self._manager_gone_since: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._started_at = time.time()
        # e.g. writes a metrics snapshot
        self.on_heartbeat: Callable[[], Awaitable[None]] | None = None
        self.completed = 0

    @property
    def stream(self) -> str:
        """The pool's task stream."""
        return self.keys.pool_tasks(self.pool_id)

    @property
    def inbox(self) -> str:
        """The pool's inbox of results shared by other pools."""
        return self.keys.pool_inbox(self.pool_id)

    def request_stop(self) -> None:
        """Begin a graceful drain (what SIGTERM does); a second request hands back at once."""
        if self._stopping.is_set() and self._stop_requested_at is not None:
            log.info("second stop request: handing back running tasks now")
            self._hurry.set()
        self._begin_drain()

    def _begin_drain(self) -> None:
        """Mark the worker stopping and arm the watchdog that ends an overdue drain."""
        self._stopping.set()
        if self._stop_requested_at is None:
            self._stop_requested_at = time.time()
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to guard
                loop = asyncio.get_running_loop()
                self._watchdog = loop.call_later(drain_deadline(self.settings), self._overdue)

    def _overdue(self) -> None:
        held = len(self._running)
        limit = drain_deadline(self.settings)
        if not self._exit_when_overdue:
            log.error("drain did not end within %.0fs (%d task(s) held): hurrying", limit, held)
            self._hurry.set()
            return
        log.error(
            "drain did not end within %.0fs (%d task(s) still held): exiting; their entries "
            "are taken back like a dead worker's",
            limit,
            held,
        )
        logging.shutdown()
        os._exit(EXIT_DRAIN_OVERDUE)

    async def start(self) -> None:
        """Load the pool's spec, build the executor, join the consumer group and register."""
        raw = decode_hash(await self.redis.hgetall(self.keys.pool(self.pool_id)))
        if not raw or "spec" not in raw:
            raise PoolNotFound(f"no pool with id {self.pool_id!r}")
        if raw.get("status") in (PoolStatus.CLOSED, PoolStatus.FAILED):
            raise PoolUnavailable(f"pool {self.pool_id!r} is {raw['status']}")
        self.spec = PoolSpec.model_validate_json(raw["spec"])
        if self._concurrency_override is None:
            self.concurrency = self.spec.concurrency
        self._executor = build_executor(self.spec, self.settings)
        await open_executor(self._executor)
        self._progress = ProgressPublisher(self.redis, self.settings, self.pool_id, self.worker_id)
        await ensure_group(self.redis, self.stream, WORKER_GROUP)
        await ensure_group(self.redis, self.inbox, WORKER_GROUP)
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(self.keys.pool_workers(self.pool_id), self.worker_id)
        self._queue_heartbeat(pipe)
        self._queue_status(pipe, "joined")
        await pipe.execute()
        log.info(
            "worker %s joined pool %s (concurrency %d)",
            self.worker_id,
            self.pool_id,
            self.concurrency,
        )

    async def run(self) -> None:
        """Serve until stopped (or, in burst mode, until the stream is empty), then drain."""
        try:
            await self.start()
        except BaseException:
            await self._reader.aclose()
            await self.redis.aclose()
            raise
        heart = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
        deadlines = asyncio.create_task(self._deadline_loop(), name="deadlines")
        flusher = asyncio.create_task(self._flush_loop(), name="flusher")
        assert self._progress is not None
        progress = asyncio.create_task(self._progress.run(self._loops_done), name="progress")
        try:
            await self._read_loop()
            await self._drain()
        finally:
            self._begin_drain()
            self._finishing.set()
            self._flush_wanted.set()
            await flusher
            self._loops_done.set()
            await stop_loops(heart, deadlines, progress, timeout=LOOP_STOP_WAIT)
            await self._leave()
            if self._executor is not None:
                await self._executor.aclose()
            await self._reader.aclose()
            await self.redis.aclose()
            # a worker process keeps its watchdog to the end: asyncio.run still waits for the
            # threads of blocking functions, which no cancel can stop
            if self._watchdog is not None and not self._exit_when_overdue:
                self._watchdog.cancel()

    # ------------------------------------------------------------------ reading

    async def _read_loop(self) -> None:
        backoff = 0.1
        recover = regroup = False
        while not self._stopping.is_set():
            free = self.concurrency - len(self._running)
            if free <= 0 and not recover:
                self._slot_freed.clear()
                await wait_any(self._slot_freed, self._stopping)
                continue
            try:
                if regroup:
                    await self._rejoin()
                    regroup = False
                    continue
                if recover:
                    # a reply lost with a dropped connection leaves entries pending on us that
                    # we never saw: read our own pending list again (id 0) and take those
                    pairs = await self._read_own_pending()
                    recover = False
                else:
                    reply = await self._reader.xreadgroup(
                        WORKER_GROUP,
                        self.worker_id,
                        {self.stream: ">", self.inbox: ">"},
                        count=free,
                        block=self.settings.worker_block_ms,
                    )
                    pairs = flatten_read(reply)
                backoff = 0.1
                entries = [entry for stream, entry in pairs if stream == self.stream]
                shared = [entry for stream, entry in pairs if stream == self.inbox]
                if shared:
                    await self._file_shared(shared)
                if entries:
                    await self._accept(entries)
                elif self.burst and not self._running and not shared:
                    return
            except TRANSIENT_ERRORS as exc:
                log.warning("reading %s failed (%s); retrying in %.1fs", self.stream, exc, backoff)
                recover = True
                await wait_any(self._stopping, timeout=backoff)
                backoff = min(backoff * 2, 5.0)
            except RedisError as exc:
                # NOGROUP / UNBLOCKED: the stream or its group was deleted under us
                if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                    raise
                regroup = True

    async def _rejoin(self) -> None:
        """Our stream or group vanished: stop if the pool is going away, else re-create them."""
        status = text(await self.redis.hget(self.keys.pool(self.pool_id), "status"))
        if status and status not in ACCEPTING_STATUSES:
            log.info("pool %s is %s: stopping", self.pool_id, status)
            self._begin_drain()
            return
        # a pool hash that is gone too (Redis lost its data) is waited for by the heartbeat
        await ensure_group(self.redis, self.stream, WORKER_GROUP)
        await ensure_group(self.redis, self.inbox, WORKER_GROUP)

    async def _read_own_pending(self) -> list[tuple[str, Entry]]:
        """Entries pending on this worker that it does not know about (lost read replies)."""
        pairs = await read_own_pending(
            self._reader,
            self.redis,
            WORKER_GROUP,
            self.worker_id,
            [self.stream, self.inbox],
            self._held(),
        )
        if pairs:
            log.warning("recovered %d entr(ies) delivered to us by a lost read", len(pairs))
        return pairs

    def _held(self) -> set[bytes]:
        """Ids of the entries this worker holds: running, finished and not yet written (or
        being written), or written with their acknowledgement pending."""
        held = set(self._running) | set(self._skipped) | {d.entry_id for d in self._dead}
        held.update(entry_id for entry_id, _ in self._unannounced)
        if self._unwritten is not None:
            _, dead, skipped, unannounced = self._unwritten
            held.update(d.entry_id for d in dead)
            held.update(skipped)
            held.update(entry_id for entry_id, _ in unannounced)
        if self._pending_ack is not None:
            held.update(self._pending_ack.entry_ids)
        return held

    async def _file_shared(self, entries: list[Entry]) -> None:
        """File results shared by other pools (RESULT_SHARE) in this pool's memory stream."""
        pipe = self.redis.pipeline(transaction=False)
        for entry_id, fields in entries:
            try:
                msg = decode(fields)
                if not isinstance(msg, ResultShare):
                    raise MalformedMessage(f"a {msg.type} message does not belong in an inbox")
            except MalformedMessage as exc:
                record = malformed_entry_record(
                    self.inbox, entry_id, fields, str(exc), pool_id=self.pool_id
                )
                queue_dead_letter(pipe, self.settings, record)
                continue
            res = msg.result
            origin = msg.from_pool or res.pool_id or "a client"
            final = FinalResult(res, summary=f"shared by {origin}", tags=["shared"])
            queue_memory_record(pipe, self.settings, final, pool_id=self.pool_id)
        ack_and_delete(pipe, self.inbox, WORKER_GROUP, [entry_id for entry_id, _ in entries])
        await pipe.execute()

    async def _accept(self, entries: list[Entry]) -> None:
        """Decode a batch, mark the runnable tasks running in one round trip, start them."""
        candidates: list[tuple[bytes, TaskDelegate]] = []
        for entry_id, fields in entries:
            try:
                msg = decode(fields)
            except MalformedMessage as exc:
                self._dead.append(_DeadLetter(entry_id, str(exc), fields))
                continue
            if not isinstance(msg, TaskDelegate):
                reason = f"a {msg.type} message does not belong on a pool task stream"
                self._dead.append(_DeadLetter(entry_id, reason, fields))
                continue
            candidates.append((entry_id, msg))
        now = time.time()
        loop = asyncio.get_running_loop()
        verdicts = await self._mark_started(candidates, now) if candidates else []
        if HOOKS and candidates:
            HOOKS.started(
                self.pool_id,
                [
                    now - m.task.submitted_at
                    for (_, m), v in zip(candidates, verdicts, strict=True)
                    if v == START_RUN
                ],
            )
        for (entry_id, msg), verdict in zip(candidates, verdicts, strict=True):
            if verdict == START_SKIP:  # already final (e.g. cancelled while queued)
                self._skipped.append(entry_id)
                continue
            if verdict == START_ANNOUNCE:  # final, but its writer died before announcing it
                self._unannounced.append((entry_id, msg.task.id))
                continue
            running = _Running(entry_id, msg, now, loop.time() + msg.task.timeout)
            self._running[entry_id] = running
            if verdict == START_CANCELLED:  # a cancel reached it between runs: record that
                stopped = Outcome(output=None, error="cancelled before it started")
                self._done.append(_Done(running, stopped, now, cancelled=True))
                continue
            running.task = asyncio.create_task(self._execute(running), name=msg.task.id)
        if self._skipped or self._dead or self._done or self._unannounced:
            self._flush_wanted.set()

    async def _mark_started(
        self, candidates: list[tuple[bytes, TaskDelegate]], now: float
    ) -> list[int]:
        """Mark tasks running in one round trip (START_RUN, START_SKIP, START_CANCELLED or
        START_ANNOUNCE each); retried, since the entries are already ours."""
        backoff = 0.1
        while True:
            try:
                verdicts = await self._scripts.start_batch(
                    keys=[self.keys.pool_task(self.pool_id, m.task.id) for _, m in candidates],
                    args=[
                        *(self.worker_id, repr(now)),
                        *(m.attempt for _, m in candidates),
                        iso_time(now),
                    ],
                )
                return [int(v) for v in verdicts]
            except TRANSIENT_ERRORS as exc:
                log.warning("marking tasks started failed (%s); retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    # ---------------------------------------------------------------- executing

    async def _execute(self, running: _Running) -> None:
        assert self._executor is not None
        task = running.message.task
        cancelled = False
        TASK_ATTEMPT.set(running.message.attempt)  # this run's own context
        if self._progress is not None:  # this asyncio task's context: its executor's output
            set_output_sink(self._progress.sink(task.id, running.message.attempt))
        try:
            set_task_log_context(task.id)  # this asyncio task's own context
            outcome = await self._executor.run(task)
        except asyncio.CancelledError:
            if running.handing_back:
                raise  # drain: the entry goes back to the stream, no result
            if running.timed_out:
                outcome = Outcome(output=None, error=f"timed out after {task.timeout:g}s")
            elif running.cancel_requested:
                cancelled = True
                outcome = Outcome(output=None, error="cancelled while running")
            else:  # the task's own code raised CancelledError
                outcome = Outcome(output=None, error="the task raised CancelledError")
        except (SystemExit, KeyboardInterrupt) as exc:  # a function must not end the worker
            outcome = Outcome(output=None, error=f"the task raised {type(exc).__name__}")
        except Exception as exc:  # an executor bug must not kill the worker
            log.exception(
                "executor crashed on task %s",
                task.id,
                extra=task_fields(task.id, self.pool_id, self.worker_id),
            )
            outcome = Outcome(output=None, error=f"executor error: {type(exc).__name__}: {exc}")
        self._done.append(_Done(running, outcome, time.time(), cancelled))
        self._flush_wanted.set()

    # ----------------------------------------------------------------- flushing

    async def _flush_loop(self) -> None:
        failing_since: float | None = None
        while True:
            if self._pending_ack is None:
                await self._flush_wanted.wait()
            elif not self._flush_wanted.is_set() and not self._finishing.is_set():
                # the next flush carries the acknowledgement; none soon: it goes alone
                await wait_any(self._flush_wanted, timeout=ACK_LINGER)
            self._flush_wanted.clear()
            try:
                await self._flush()
                failing_since = None
            except Exception as exc:  # results are kept and written again
                if isinstance(exc, TRANSIENT_ERRORS):
                    log.warning("writing results failed (%s); will retry", exc)
                else:
                    log.exception("writing results failed; will retry")
                now = time.monotonic()
                failing_since = failing_since or now
                if self._stopping.is_set() and now - failing_since > self.settings.drain_grace:
                    # exiting is safe: the entries stay pending on us and are taken back
                    # once our heartbeat expires
                    log.error(
                        "giving up on %d unwritten result(s) and %d unacknowledged entr(ies) "
                        "after the grace",
                        len(self._done) + len(self._unwritten[0] if self._unwritten else []),
                        len(self._pending_ack.entry_ids if self._pending_ack else ()),
                    )
                    return
                await asyncio.sleep(0.5)  # not wait_any(self._stopping): it may be set already
                self._flush_wanted.set()
                continue
            # only once reading and draining are over: a read in flight when the stop came can
            # still start tasks after a moment with nothing running
            if (
                self._finishing.is_set()
                and not self._running
                and not self._done
                and self._unwritten is None
                and self._pending_ack is None
            ):
                return

    async def _flush(self) -> None:
        if self._unwritten is not None:
            # a failed write is retried exactly as it was: its announcements are added once per
            # sent marker, and the marker is named after the batch
            done, dead, skipped, unannounced = self._unwritten
        else:
            done, self._done = self._done, []
            dead, self._dead = self._dead, []
            skipped, self._skipped = self._skipped, []
            unannounced, self._unannounced = self._unannounced, []
        if not done and not dead and not skipped and not unannounced:
            if self._pending_ack is not None:  # no flush came to carry it
                await acknowledge_pending(
                    self.redis, self._scripts, self.settings, self._pending_ack
                )
                self._pending_ack = None
            return
        finished = [item.running.message.task.id for item in done]
        if self._progress is not None and self._progress.has_pending(finished):
            await self._progress.flush(finished)  # a task's last output before its result
        try:
            await self._write(done, dead, skipped, unannounced)
        except BaseException:
            self._unwritten = (done, dead, skipped, unannounced)
            raise
        self._unwritten = None
        if self._done or self._dead or self._skipped or self._unannounced:
            self._flush_wanted.set()  # what finished while this batch was retried
        for item in done:
            self._running.pop(item.running.entry_id, None)
        self.completed += len(done)
        self._slot_freed.set()

    async def _write(
        self,
        done: list[_Done],
        dead: list[_DeadLetter],
        skipped: list[bytes],
        unannounced: list[tuple[bytes, str]],
    ) -> None:
        finals: list[FinalResult] = []
        retries: list[_Done] = []
        for item in done:
            msg = item.running.message
            task = msg.task
            error = item.outcome.error
            if error is None:
                status = TaskStatus.COMPLETED
            elif item.cancelled:
                status = TaskStatus.CANCELLED
            elif not item.outcome.retryable:
                status = TaskStatus.FAILED
            elif msg.attempt < task.max_attempts:
                retries.append(item)
                continue
            else:
                status = TaskStatus.DEAD_LETTERED
            finals.append(self._final(item, status))
        ack_ids = [item.running.entry_id for item in done] + [d.entry_id for d in dead] + skipped
        ack_ids += [entry_id for entry_id, _ in unannounced]

        def extra(pipe: Pipeline) -> None:
            self._queue_retries(pipe, retries)
            self._queue_dead_letters(pipe, dead)

        _, self._pending_ack = await finalize_deferring_ack(
            self.redis,
            self._scripts,
            self.settings,
            finals,
            previous=self._pending_ack,
            ack=(self.stream, WORKER_GROUP, ack_ids),
            extra=extra if retries or dead else None,
            stored=[(self.pool_id, task_id) for _, task_id in unannounced],
        )
        if HOOKS and retries:
            HOOKS.retried(self.pool_id, len(retries))
        self._log_outcomes(finals, retries)

    def _log_outcomes(self, finals: list[FinalResult], retries: list[_Done]) -> None:
        """One line per task that failed, was retried or (at DEBUG) completed."""
        debug = log.isEnabledFor(logging.DEBUG)
        for final in finals:
            res = final.result
            if res.status is TaskStatus.COMPLETED and not debug:
                continue  # the common case costs one comparison
            fields = task_fields(res.task_id, self.pool_id, self.worker_id)
            fields["attempt"] = str(res.attempts)
            if res.status is TaskStatus.COMPLETED:
                log.debug("task %s completed in %.3fs", res.task_id, res.duration, extra=fields)
            else:
                log.warning("task %s %s: %s", res.task_id, res.status, res.error, extra=fields)
        for item in retries:
            msg = item.running.message
            fields = task_fields(msg.task.id, self.pool_id, self.worker_id)
            fields["attempt"] = str(msg.attempt)
            log.info(
                "task %s attempt %d failed, will retry: %s",
                *(msg.task.id, msg.attempt, item.outcome.error),
                extra=fields,
            )

    def _final(self, item: _Done, status: TaskStatus) -> FinalResult:
        msg = item.running.message
        error = item.outcome.error
        if status is TaskStatus.DEAD_LETTERED:
            error = dead_letter_reason(msg.attempt, error)
        result = TaskResult.trusted(  # every value is ours and of the right type
            task_id=msg.task.id,
            pool_id=self.pool_id,
            worker_id=self.worker_id,
            status=status,
            output=item.outcome.output,
            error=error,
            exit_code=item.outcome.exit_code,
            attempts=msg.attempt,
            duration=round(item.finished_at - item.running.started_at, 6),
            started_at=item.running.started_at,
            finished_at=item.finished_at,
        )
        token = f"{self.worker_id}/{text(item.running.entry_id)}"
        return FinalResult(
            result,
            msg.task.reply_to,
            msg.task.describe(),
            list(msg.task.tags),
            token,
            self._history(item),
            msg.task,
            list(msg.task.share_with),
            submitted_at=msg.task.submitted_at,
        )

    def _history(self, item: _Done) -> list[str]:
        """The task's attempt history including this attempt."""
        return with_line(item.running.message.history, self._attempt_line(item))

    def _attempt_line(self, item: _Done) -> str:
        msg = item.running.message
        return f"attempt {msg.attempt} on {self.worker_id}: {item.outcome.error}"

    def _queue_retries(self, pipe: Pipeline, retries: list[_Done]) -> None:
        for item in retries:
            msg = item.running.message
            queue_retry(
                pipe,
                self.settings,
                self._scripts,
                msg,
                pool_id=msg.task.pool_id or "",
                home=self.pool_id,
                line=self._attempt_line(item),
                error=str(item.outcome.error),
            )

    def _queue_dead_letters(self, pipe: Pipeline, dead: list[_DeadLetter]) -> None:
        """Dead-letter entries that could not be decoded (failed tasks: `finalize_results`)."""
        for item in dead:
            log.warning("dead-lettered %s: %s", text(item.entry_id), item.reason)
            record = malformed_entry_record(
                self.stream, item.entry_id, item.fields, item.reason, pool_id=self.pool_id
            )
            queue_dead_letter(pipe, self.settings, record)

    # ---------------------------------------------------------------- heartbeat

    def _queue_heartbeat(self, pipe: Pipeline) -> None:
        key = self.keys.worker(self.worker_id)
        now = time.time()
        pipe.hset(
            key,
            mapping={
                "pool": self.pool_id,
                "pid": str(os.getpid()),
                "host": socket.gethostname(),
                "in_flight": str(len(self._running)),
                "concurrency": str(self.concurrency),
                "completed": str(self.completed),
                "started_at": repr(self._started_at),
                "last_seen": repr(now),
                "status": "draining" if self._stopping.is_set() else "running",
                "draining_since": repr(self._stop_requested_at or 0.0),
                "drain_deadline": repr(drain_deadline(self.settings)),
                "managed_by": self.managed_by,
                "kind": self._kind,
            },
        )
        pipe.pexpire(key, int(self.settings.heartbeat_ttl * 1000))
        # every beat, not only at start: after a gap the orchestrator may have pruned us
        pipe.sadd(self.keys.pool_workers(self.pool_id), self.worker_id)

    def _queue_status(self, pipe: Pipeline, worker_status: str) -> None:
        update = StatusUpdate(
            pool_id=self.pool_id,
            worker_id=self.worker_id,
            worker_status=worker_status,
            detail=f"worker {self.worker_id} {worker_status} (completed {self.completed})",
        )
        pipe.xadd(
            self.keys.events, encode(update), maxlen=self.settings.events_max_len, approximate=True
        )

    async def _deadline_loop(self) -> None:
        """Cancel tasks past their timeout (one timer for all tasks, not one per task)."""
        loop = asyncio.get_running_loop()
        while not self._loops_done.is_set():  # (it talks to no Redis: a sleep will do)
            await asyncio.sleep(DEADLINE_TICK)
            now = loop.time()
            for item in list(self._running.values()):
                if now >= item.deadline and item.task is not None and not item.task.done():
                    item.timed_out = True
                    item.task.cancel()

    async def _heartbeat_loop(self) -> None:
        last_event = 0.0
        while not self._loops_done.is_set():
            await wait_any(self._loops_done, timeout=self.settings.heartbeat_interval)
            if self._loops_done.is_set():
                return
            running = list(self._running.values())
            pipe = self.redis.pipeline(transaction=False)
            self._queue_heartbeat(pipe)
            pool_status = queued(pipe, pipe.hget(self.keys.pool(self.pool_id), "status"))
            manager = queued(pipe, pipe.exists(self.keys.orchestrator(self.managed_by or "-")))
            cancels = []
            for item in running:
                state = self.keys.pool_task(self.pool_id, item.message.task.id)
                cancels.append(queued(pipe, pipe.hget(state, "cancel_requested")))
            now = time.time()
            if now - last_event >= HEARTBEAT_EVENT_EVERY:
                beat = Heartbeat(
                    worker_id=self.worker_id, pool_id=self.pool_id, in_flight=len(running)
                )
                pipe.xadd(
                    self.keys.events,
                    encode(beat),
                    maxlen=self.settings.events_max_len,
                    approximate=True,
                )
                last_event = now
            try:
                replies = await pipe.execute()
            except RedisError as exc:  # any error: a worker without heartbeats loses its work
                log.warning("heartbeat failed: %s", exc)
                continue
            if self.on_heartbeat is not None:
                await self.on_heartbeat()
            status, manager_alive = pool_status.reply(replies), manager.reply(replies)
            self._check_pool(text(status), bool(manager_alive), now)
            for item, cancel in zip(running, cancels, strict=True):
                if (
                    text(cancel.reply(replies)) == "1"
                    and not item.cancel_requested
                    and item.task is not None
                ):
                    item.cancel_requested = True
                    item.task.cancel()

    def _check_pool(self, status: str, manager_alive: bool, now: float) -> None:
        """Drain when the pool is closing or has failed, when its hash has been gone for a
        while (a Redis that lost its data gets time for the orchestrator to re-register it),
        or when the orchestrator that started this process has been gone for a while (its
        successor starts workers of its own; an orphan would only add to the target)."""
        patience = self.pool_gone_patience
        if status in (PoolStatus.CLOSING, PoolStatus.CLOSED, PoolStatus.FAILED):
            self._stop_because(f"pool {self.pool_id} is {status}")
        if status:
            self._pool_gone_since = None
        else:
            self._pool_gone_since = self._pool_gone_since or now
            if now - self._pool_gone_since > patience:
                self._stop_because(f"pool {self.pool_id} is gone")
        if not self.managed_by or manager_alive:
            self._manager_gone_since = None
        else:
            self._manager_gone_since = self._manager_gone_since or now
            if now - self._manager_gone_since > patience:
                self._stop_because(f"orchestrator {self.managed_by} that started it is gone")

    @property
    def pool_gone_patience(self) -> float:
        """Seconds a vanished pool hash or orchestrator is waited for before draining."""
        return 3 * self.settings.orchestrator_lease_ttl

    def _stop_because(self, why: str) -> None:
        if not self._stopping.is_set():
            log.info("%s: draining", why)
        self._begin_drain()

    # -------------------------------------------------------------------- drain

    async def _drain(self) -> None:
        """Let in-flight tasks finish within the grace period; hand back the rest."""
        pending = [r.task for r in self._running.values() if r.task is not None]
        if pending:
            # cancelling these two waiters leaves the tasks themselves running
            finished = asyncio.create_task(asyncio.wait(pending))
            hurry = asyncio.create_task(self._hurry.wait())
            await asyncio.wait(
                [finished, hurry],
                timeout=self.settings.drain_grace,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for waiter in (finished, hurry):
                waiter.cancel()
            await asyncio.gather(finished, hurry, return_exceptions=True)
        leftovers = [r for r in self._running.values() if r.task is not None and not r.task.done()]
        for r in leftovers:
            assert r.task is not None
            r.handing_back = True
            r.task.cancel(HAND_BACK)
        if leftovers:
            tasks = [r.task for r in leftovers if r.task is not None]
            _, ignoring = await asyncio.wait(tasks, timeout=DRAIN_EXIT_MARGIN / 2)
            if ignoring:
                log.warning("%d task(s) ignore cancellation: handing them back", len(ignoring))
            # a task that finished just before its cancel landed has a result to flush instead
            unfinished = [r for r in leftovers if r.task is not None and not r.task.done()]
            unfinished += [r for r in leftovers if r.task is not None and r.task.cancelled()]
            await self._hand_back(unfinished)

    async def _hand_back(self, leftovers: list[_Running]) -> None:
        """Return unfinished entries to the pool's stream as fresh entries (same attempt).

        Retried until the drain margin is spent; then the entries stay pending on this worker
        and are taken back once it has exited.
        """
        deadline = time.monotonic() + DRAIN_EXIT_MARGIN / 2
        backoff = 0.1
        while True:
            pipe = self.redis.pipeline(transaction=False)
            for r in leftovers:
                pipe.xadd(self.stream, encode(r.message))
                self._scripts.set_task(
                    pipe,
                    self.keys.pool_task(self.pool_id, r.message.task.id),
                    status=TaskStatus.QUEUED,
                )
            ack_and_delete(pipe, self.stream, WORKER_GROUP, [r.entry_id for r in leftovers])
            try:
                await self._scripts.execute(pipe)
                log.info("handed back %d unfinished task(s)", len(leftovers))
                break
            except RedisError as exc:
                if time.monotonic() + backoff > deadline:
                    log.error("could not hand back %d task(s): %s", len(leftovers), exc)
                    break
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
        for r in leftovers:
            self._running.pop(r.entry_id, None)

    async def _leave(self) -> None:
        """Leave the group (only once nothing is pending on us) and drop the heartbeat."""
        try:
            pending = await self.redis.xpending_range(
                self.stream, WORKER_GROUP, min="-", max="+", count=1, consumername=self.worker_id
            )
            pipe = self.redis.pipeline(transaction=False)
            if not pending:
                pipe.xgroup_delconsumer(self.stream, WORKER_GROUP, self.worker_id)
            pipe.srem(self.keys.pool_workers(self.pool_id), self.worker_id)
            pipe.delete(self.keys.worker(self.worker_id))
            self._queue_status(pipe, "left")
            await pipe.execute()
        except RedisError as exc:
            log.warning("could not leave the group cleanly: %s", exc)


async def serve(
    settings: Settings,
    pool_id: str,
    *,
    concurrency: int | None = None,
    burst: bool = False,
    worker_id: str | None = None,
    managed_by: str = "",
) -> int:
    """Run a worker until SIGTERM/SIGINT (drain) and return a process exit code."""
    worker = Worker(
        settings,
        pool_id,
        concurrency=concurrency,
        burst=burst,
        worker_id=worker_id,
        managed_by=managed_by,
        exit_when_overdue=True,
    )
    bind_log_context(pool=pool_id, worker=worker.worker_id)
    metrics = install_metrics(settings, role=f"worker {worker.worker_id}")
    snapshots: SnapshotWriter | None = None
    folder = os.environ.get(WORKER_METRICS_DIR_ENV)
    if metrics is None and folder:  # a local worker of an orchestrator serving /metrics
        observer = installed_metrics().observer
        snapshots = SnapshotWriter(Path(folder), worker.worker_id, observer.snapshot)
        worker.on_heartbeat = snapshots.write
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    try:
        await worker.run()
    finally:
        if metrics is not None:
            metrics.close()
        if snapshots is not None:
            await snapshots.write()
    return 0
