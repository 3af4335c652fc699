"""Instrumentation hooks: what happens to tasks and pools, told to whoever listens.

The code paths call `HOOKS` once per batch (a batch of tasks started, a batch of results
recorded, a pool stream's forward), never per Redis call; with no observer installed a call
is a truth test of an empty list. Observers are installed per process at start (the
orchestrator, a worker, the MCP facade: `shared.metrics.install`), as stamina's
instrumentation hooks are: the code that does the work knows nothing of Prometheus.

An observer that raises is logged and skipped: instrumentation must never break the work.

Pool labels: a task's pool id, `ROUTED` for a routed task submitted to the ingress (its pool is
chosen later), `NO_POOL` for a result of a task that never reached a pool (it failed routing).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger("mahavishnu.hooks")

ROUTED = "(routed)"
NO_POOL = "(none)"


@dataclass(frozen=True)
class Finished:
    """A final result recorded now (once per task, whatever the redeliveries)."""

    pool: str
    status: str  # a final TaskStatus value
    duration: float  # seconds the last attempt ran (0 when it never ran)
    end_to_end: float | None  # seconds from submission to the result, when known


@dataclass(frozen=True)
class PoolFigures:
    """One pool as its lease holder saw it at a supervision tick."""

    pool: str
    status: str
    backlog: int  # entries in its stream (queued + in flight)
    in_flight: int
    local_workers: int
    external_workers: int
    draining: int
    capacity: int
    completed: int  # the pool's own counters in Redis (`pool:{P}:load`)
    failed: int


class Observer:
    """Base class of an observer: every hook does nothing unless overridden."""

    def submitted(self, pool: str, count: int) -> None:
        """`count` tasks were queued for `pool` (or `ROUTED`) by this process."""

    def routed(self, pool: str, count: int) -> None:
        """`count` routed tasks were moved into `pool`."""

    def started(self, pool: str, queue_waits: Sequence[float]) -> None:
        """Tasks started on `pool`; each one's seconds from submission to its start."""

    def finished(self, results: Sequence[Finished]) -> None:
        """Final results were recorded (completed, failed, cancelled or dead-lettered)."""

    def retried(self, pool: str, count: int) -> None:
        """`count` failed or lost attempts on `pool` were scheduled to run again."""

    def reclaimed(self, pool: str, count: int) -> None:
        """`count` entries of dead workers (or past their deadline) were taken back."""

    def pools(self, figures: Sequence[PoolFigures]) -> None:
        """The pools this process supervises (holds the lease of), as of now: the whole set,
        so a pool no longer held (or gone) is dropped."""

    def memory_sync(self, target: str, lag_seconds: float) -> None:
        """The memory-sync aggregator's lag behind the newest finished task, per target."""


class Hooks:
    """The installed observers; each hook fans out to all of them."""

    def __init__(self) -> None:
        self.observers: list[Observer] = []

    def __bool__(self) -> bool:
        """Whether anyone listens: callers skip building a hook's arguments otherwise."""
        return bool(self.observers)

    def add(self, observer: Observer) -> None:
        if observer not in self.observers:
            self.observers.append(observer)

    def remove(self, observer: Observer) -> None:
        if observer in self.observers:
            self.observers.remove(observer)

    def _each(self, name: str, *args: object) -> None:
        for observer in self.observers:
            try:
                getattr(observer, name)(*args)
            except Exception:
                log.exception("observer %s failed in %s", type(observer).__name__, name)

    def submitted(self, pool: str, count: int) -> None:
        self._each("submitted", pool, count)

    def routed(self, pool: str, count: int) -> None:
        self._each("routed", pool, count)

    def started(self, pool: str, queue_waits: Sequence[float]) -> None:
        self._each("started", pool, queue_waits)

    def finished(self, results: Sequence[Finished]) -> None:
        self._each("finished", results)

    def retried(self, pool: str, count: int) -> None:
        self._each("retried", pool, count)

    def reclaimed(self, pool: str, count: int) -> None:
        self._each("reclaimed", pool, count)

    def pools(self, figures: Sequence[PoolFigures]) -> None:
        self._each("pools", figures)

    def memory_sync(self, target: str, lag_seconds: float) -> None:
        self._each("memory_sync", target, lag_seconds)


HOOKS = Hooks()
"""This process's hooks (one per process, like the logging configuration)."""
