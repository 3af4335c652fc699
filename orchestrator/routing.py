"""Routing decisions (docs/architecture.md): which eligible pool takes a task.

Pure functions over a snapshot of the pools, so the rules are unit-tested without Redis. The
orchestrator refreshes the snapshot (status, labels, live workers, capacity) on every supervision
tick and the backlog (XLEN of each pool's stream: unread plus in flight, since acked entries are
deleted) when it is older than 0.1 s and after every forward, and counts what it routes within
the batch.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from shared.models import PoolStatus, RoutingStrategy, TaskSpec, WorkerType, executor_runs

ROUTABLE_STATUSES = frozenset({PoolStatus.RUNNING, PoolStatus.DEGRADED, PoolStatus.SCALING})


@dataclass
class Candidate:
    """What routing needs to know about one pool."""

    pool_id: str
    status: PoolStatus
    worker_type: WorkerType
    labels: dict[str, str] = field(default_factory=dict)
    live_workers: int = 0
    capacity: int = 0
    backlog: int = 0
    max_queue: int = 10_000

    @property
    def load(self) -> float:
        """Backlog (queued + in flight) per unit of capacity."""
        return self.backlog / self.capacity if self.capacity > 0 else float("inf")


def ineligibility(pool: Candidate, task: TaskSpec) -> str | None:
    """Why `pool` cannot take `task`, or None if it can."""
    if pool.status not in ROUTABLE_STATUSES:
        return f"{pool.pool_id} is {pool.status}"
    if pool.live_workers <= 0:
        return f"{pool.pool_id} has no live worker"
    if pool.backlog >= pool.max_queue:
        return f"{pool.pool_id} is full ({pool.backlog}/{pool.max_queue})"
    for key, value in task.labels.items():
        if pool.labels.get(key) != value:
            return f"{pool.pool_id} lacks label {key}={value}"
    if not executor_runs(pool.worker_type, task.kind):
        return f"{pool.pool_id} ({pool.worker_type}) cannot run a {task.kind} task"
    return None


def eligible(pools: list[Candidate], task: TaskSpec) -> list[Candidate]:
    """The pools that can take `task` now."""
    return [p for p in pools if ineligibility(p, task) is None]


def explain(pools: list[Candidate], task: TaskSpec) -> str:
    """A one-line reason why no pool can take `task`."""
    if not pools:
        return "no pool exists"
    reasons = [ineligibility(p, task) or f"{p.pool_id} is eligible" for p in pools[:8]]
    more = f" (+{len(pools) - 8} more)" if len(pools) > 8 else ""
    return "no eligible pool: " + "; ".join(reasons) + more


def rendezvous_score(key: str, pool_id: str) -> int:
    """Highest-random-weight score: the pool with the top score owns the key."""
    digest = hashlib.blake2b(f"{key}\x00{pool_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Router:
    """Picks a pool per task; keeps the round-robin position between batches."""

    def __init__(self, default: RoutingStrategy, rng: random.Random | None = None) -> None:
        self.default = default
        self._rng = rng or random.Random()
        self._next = 0

    def choose(self, task: TaskSpec, pools: list[Candidate]) -> Candidate | None:
        """The pool for `task` among `pools` (already eligible), or None when there is none.

        The chosen pool's backlog is incremented, so later choices in the same batch see it.
        """
        if not pools:
            return None
        strategy = task.strategy or self.default
        if strategy is RoutingStrategy.AFFINITY or (task.affinity_key and task.strategy is None):
            if task.affinity_key:
                key = task.affinity_key
                chosen = max(pools, key=lambda p: rendezvous_score(key, p.pool_id))
            else:
                chosen = min(pools, key=lambda p: (p.load, p.pool_id))
        elif strategy is RoutingStrategy.ROUND_ROBIN:
            ordered = sorted(pools, key=lambda p: p.pool_id)
            chosen = ordered[self._next % len(ordered)]
            self._next += 1
        elif strategy is RoutingStrategy.RANDOM:
            chosen = self._rng.choice(pools)
        else:
            chosen = min(pools, key=lambda p: (p.load, p.pool_id))
        chosen.backlog += 1
        return chosen
