"""Live progress of running tasks: the output chunks a worker publishes while a task runs.

Each task that prints something gets a progress stream in its pool's slot
(`Keys.task_progress`). Executors hand text to the sink of the task they run (`output_sink()`;
the worker sets it around each run through a context variable, so the Executor interface needs
no new parameter); `ProgressPublisher` writes what came in, one entry per task at most every
`progress_interval` seconds, in one pipeline for all tasks; the stream is trimmed to
`progress_max_len` entries and expires `progress_ttl` seconds after its last write. A task that
prints nothing costs no write at all: its steps (queued, routed, running) are read from its
state hash by whoever follows it (`shared/progress.py`). Progress is a view: a write that fails
is logged and dropped (the task's result keeps its whole output).

Entries are plain fields, readable with `redis-cli XRANGE`: `kind` (`output`), `worker`,
`attempt`, `at` (epoch seconds) and `text`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from shared.aio import wait_any
from shared.config import Settings
from shared.connection import Fields, Redis

log = logging.getLogger("mahavishnu.worker")

MAX_ENTRY_CHARS = 4000
"""Text of one output entry; what came in beyond it within one interval is not shown live."""

OutputSink = Callable[[str], None]

_SINK: ContextVar[OutputSink | None] = ContextVar("mahavishnu_output_sink", default=None)


def output_sink() -> OutputSink | None:
    """The sink for the output of the task running in this context, or None outside a task."""
    return _SINK.get()


def set_output_sink(sink: OutputSink | None) -> None:
    """Make `sink` receive the output of the task running in this (asyncio task's) context."""
    _SINK.set(sink)


def report_output(text: str) -> None:
    """Publish `text` as live output of the current task (a no-op outside a worker's task).

    A pool's Python function may call it, from the event loop or from its thread."""
    sink = _SINK.get()
    if sink is not None and text:
        sink(text)


@dataclass
class _Pending:
    attempt: int
    parts: list[str] = field(default_factory=list)
    size: int = 0
    hidden: int = 0  # characters beyond MAX_ENTRY_CHARS within this interval


class ProgressPublisher:
    """Buffers each running task's output and writes it to the task's progress stream."""

    def __init__(self, redis: Redis, settings: Settings, pool_id: str, worker_id: str) -> None:
        self._redis, self._settings, self._pool_id = redis, settings, pool_id
        self._worker_id = worker_id
        self._pending: dict[str, _Pending] = {}
        self._wanted = asyncio.Event()
        self._lock = asyncio.Lock()  # one write at a time: a task's entries stay in order
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._last = 0.0

    def sink(self, task_id: str, attempt: int) -> OutputSink:
        """The sink receiving the output of one run of a task."""

        def add(text: str) -> None:
            if threading.get_ident() != self._thread:  # a Python function's thread
                self._loop.call_soon_threadsafe(self.add, task_id, attempt, text)
            else:
                self.add(task_id, attempt, text)

        return add

    def add(self, task_id: str, attempt: int, text: str) -> None:
        """Buffer `text` for the task's next entry."""
        if not text:
            return
        pending = self._pending.get(task_id)
        if pending is None or pending.attempt != attempt:
            pending = self._pending[task_id] = _Pending(attempt)
        room = MAX_ENTRY_CHARS - pending.size
        if len(text) > room:
            pending.hidden += len(text) - max(room, 0)
            text = text[: max(room, 0)]
        if text:
            pending.parts.append(text)
            pending.size += len(text)
        self._wanted.set()

    def has_pending(self, task_ids: Iterable[str]) -> bool:
        """Whether any of these tasks has output not yet written."""
        return any(task_id in self._pending for task_id in task_ids)

    async def run(self, stop: asyncio.Event) -> None:
        """Write buffered output at most once per `progress_interval` until `stop` is set."""
        interval = self._settings.progress_interval
        while not stop.is_set():
            await wait_any(self._wanted, stop)
            if stop.is_set():
                break
            wait = self._last + interval - time.monotonic()
            if wait > 0:
                await wait_any(stop, timeout=wait)
            await self.flush()
        await self.flush()

    async def flush(self, task_ids: Iterable[str] | None = None) -> None:
        """Write the buffered output (of `task_ids` only, when given) now."""
        async with self._lock:
            if task_ids is None:
                batch, self._pending = self._pending, {}
                self._wanted.clear()
            else:
                batch = {t: p for t in task_ids if (p := self._pending.pop(t, None)) is not None}
            if not batch:
                return
            self._last = time.monotonic()
            keys, settings = self._settings.keys, self._settings
            ttl_ms = int(settings.progress_ttl * 1000)
            now = repr(time.time())
            pipe = self._redis.pipeline(transaction=False)
            for task_id, pending in batch.items():
                text = "".join(pending.parts)
                if pending.hidden:
                    text += f"\n[{pending.hidden} more characters not shown live]"
                stream = keys.task_progress(self._pool_id, task_id)
                fields: Fields = {
                    "kind": "output",
                    "worker": self._worker_id,
                    "attempt": pending.attempt,
                    "at": now,
                    "text": text,
                }
                pipe.xadd(stream, fields, maxlen=settings.progress_max_len, approximate=True)
                pipe.pexpire(stream, ttl_ms)
            try:
                await pipe.execute()
            except RedisError as exc:
                log.warning("progress of %d task(s) not published: %s", len(batch), exc)
