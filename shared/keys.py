"""Every Redis key name the system uses, in one place (the key table: docs/architecture.md).

Keys that belong to one pool carry the pool id as a Redis Cluster hash tag (`{P}`), so all of a
pool's keys live on one shard.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "mhv:"

ORCHESTRATOR_GROUP = "orchestrators"
WORKER_GROUP = "workers"


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix; every process builds them from here and nowhere else."""

    prefix: str = DEFAULT_PREFIX

    @property
    def ingress(self) -> str:
        """Stream of tasks waiting to be routed (group `orchestrators`)."""
        return f"{self.prefix}tasks"

    @property
    def control(self) -> str:
        """Stream of control commands: spawn, scale, close (group `orchestrators`)."""
        return f"{self.prefix}control"

    @property
    def pools(self) -> str:
        """Set of the ids of live pools."""
        return f"{self.prefix}pools"

    @property
    def events(self) -> str:
        """Trimmed broadcast stream: pool lifecycle, status updates, completions, heartbeats."""
        return f"{self.prefix}events"

    @property
    def delayed(self) -> str:
        """Sorted set of tasks waiting for a retry, scored by due time."""
        return f"{self.prefix}delayed"

    @property
    def dlq(self) -> str:
        """Stream of dead letters, each with its reason."""
        return f"{self.prefix}dlq"

    @property
    def scheduler_lease(self) -> str:
        """Lease held by the one orchestrator that moves due retries back into pool streams."""
        return f"{self.prefix}lease:scheduler"

    @property
    def epoch(self) -> str:
        """Hash: the deployment epoch (id, created_at; lost_at and lost after Redis lost its data).
        Orchestrators keep it; when it vanishes they know the data went with it."""
        return f"{self.prefix}epoch"

    def pool(self, pool_id: str) -> str:
        """Hash: the pool's spec and status."""
        return f"{self.prefix}pool:{{{pool_id}}}"

    def pool_tasks(self, pool_id: str) -> str:
        """Stream: the pool's task queue (group `workers`)."""
        return f"{self.prefix}pool:{{{pool_id}}}:tasks"

    def pool_inbox(self, pool_id: str) -> str:
        """Stream: targeted messages to the pool, bounded."""
        return f"{self.prefix}pool:{{{pool_id}}}:inbox"

    def pool_load(self, pool_id: str) -> str:
        """Hash: the pool's load metrics used for routing."""
        return f"{self.prefix}pool:{{{pool_id}}}:load"

    def pool_memory(self, pool_id: str) -> str:
        """Stream: memory records of the pool's finished tasks."""
        return f"{self.prefix}pool:{{{pool_id}}}:memory"

    def pool_workers(self, pool_id: str) -> str:
        """Set: ids of the workers that joined the pool (the orchestrator prunes dead ones)."""
        return f"{self.prefix}pool:{{{pool_id}}}:workers"

    def pool_lease(self, pool_id: str) -> str:
        """String with TTL: the orchestrator that supervises the pool."""
        return f"{self.prefix}pool:{{{pool_id}}}:lease"

    def worker(self, worker_id: str) -> str:
        """Hash with TTL: a worker's heartbeat."""
        return f"{self.prefix}worker:{worker_id}"

    def orchestrator(self, orchestrator_id: str) -> str:
        """Hash with TTL: an orchestrator's heartbeat."""
        return f"{self.prefix}orchestrator:{orchestrator_id}"

    def task(self, task_id: str) -> str:
        """Hash with TTL: a task's state and result."""
        return f"{self.prefix}task:{task_id}"

    def replies(self, client_id: str) -> str:
        """Stream with TTL: results for one client."""
        return f"{self.prefix}replies:{client_id}"

    def idempotency(self, key: str) -> str:
        """String with TTL: the task id first submitted under an idempotency key."""
        return f"{self.prefix}idem:{key}"

    def kind_of(self, key: str) -> str:
        """Name the kind of one of our keys (for `mahavishnu inspect`), or '' if it is not ours."""
        if not key.startswith(self.prefix):
            return ""
        rest = key[len(self.prefix) :]
        if rest.startswith("pool:{"):
            tail = rest.split("}", 1)[1] if "}" in rest else ""
            return f"pool{tail.replace(':', '_')}" if tail else "pool"
        head = rest.split(":", 1)[0]
        return head
