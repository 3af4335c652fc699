"""What a pool backend is: the part of supervision that depends on where a pool's workers run.

The supervisor (`orchestrator/supervisor.py`) does everything that goes through Redis the same
way for every pool — leases, status, load, reclaim, closing — and asks the pool's backend, by
pool type (`orchestrator/pools/__init__.py`), for the rest: whether it can run a pool at all,
bringing the workers it manages to a target, what became of them since the last tick, draining
and killing them, and describing them. A backend manages only its own workers: workers it did
not start (other hosts, by hand) are external and never its business.

Adding a backend is adding a module with a `PoolBackend` subclass and registering it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from shared.models import PoolSpec


@dataclass
class Sweep:
    """What a backend found since the last tick."""

    exited: list[str] = field(default_factory=list)  # worker ids gone for good: heartbeats stale
    restart_reason: str = ""  # why a worker exited or was killed unasked, if one was
    failed: str = ""  # set when the pool cannot run at all (e.g. its workers die at start)
    degraded: str = ""  # set when its workers serve but cannot do their work (a remote is down)


class PoolBackend(ABC):
    """Starts, watches and stops the workers of the pools of one type on behalf of the
    orchestrator that holds their leases."""

    @abstractmethod
    def problem(self, spec: PoolSpec) -> str:
        """Why this backend cannot run a pool with this spec ('' if it can): checked at spawn."""

    @abstractmethod
    async def reconcile(self, spec: PoolSpec, target: int) -> None:
        """Start or stop managed workers so that `target` of them are neither exited nor
        asked to stop (what a spawn, a scale and an autoscale come to)."""

    @abstractmethod
    def sweep(self, pool_id: str, live: set[str], drain_limit: float) -> Sweep:
        """Forget workers that exited, kill those asked to stop more than `drain_limit` s ago;
        `live`: the worker ids whose heartbeat is live now."""

    @abstractmethod
    def managed(self, pool_id: str) -> set[str]:
        """Ids of every worker of the pool this backend started and still has."""

    @abstractmethod
    def active(self, pool_id: str) -> set[str]:
        """Managed workers not asked to stop (a starting one may not heartbeat yet)."""

    @abstractmethod
    def stop(self, pool_id: str) -> None:
        """Ask every managed worker of the pool to drain (closing, failing)."""

    @abstractmethod
    def kill(self, pool_id: str) -> None:
        """Stop the pool's managed workers that did not drain in time, at once."""

    @abstractmethod
    def running(self, pool_id: str) -> int:
        """How many managed workers of the pool have not exited yet."""

    @abstractmethod
    def forget(self, pool_id: str) -> None:
        """Drop what is known of a closed pool once nothing of it runs."""

    @abstractmethod
    async def stop_all(self, grace: float) -> None:
        """Drain every managed worker of every pool; kill what still runs after `grace`."""

    @abstractmethod
    def describe(self, pool_id: str) -> dict[str, Any]:
        """What the backend knows of the pool's workers, for operators (JSON-ready)."""

    @abstractmethod
    def logs(self, pool_id: str, worker_id: str, tail: int) -> list[str]:
        """The last `tail` lines a managed worker wrote ([] if unknown)."""
