"""Every Redis key name the system uses, in one place (the key table: docs/architecture.md).

Keys that belong to one pool carry the pool id as a Redis Cluster hash tag (`{P}`), so all of a
pool's keys live on one shard: its stream, its hash and the state of every task queued on it
(`pool_task`). The orchestrators' two input streams and the tasks' look-up hashes (`task`)
share the tag `{ingress}`: one blocking read covers both streams, and one script writes the
look-ups of a whole batch. `{events}`, `{dlq}` and `replies:{C}` carry tags so that their sent
markers share their slot. Every other key hashes on its own. Each script touches the keys of
one slot (`shared/scripts.py` checks it), so the same calls work on one server and on Redis
Cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "mhv:"

ORCHESTRATOR_GROUP = "orchestrators"
WORKER_GROUP = "workers"
INGRESS_TAG = "{ingress}"


def hash_tag(key: str) -> str:
    """The part of `key` Redis Cluster hashes: the first non-empty `{...}`, else the whole key."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix; every process builds them from here and nowhere else."""

    prefix: str = DEFAULT_PREFIX

    @property
    def ingress(self) -> str:
        """Stream of tasks waiting to be routed (group `orchestrators`)."""
        return f"{self.prefix}{INGRESS_TAG}:tasks"

    @property
    def control(self) -> str:
        """Stream of control commands: spawn, scale, close (group `orchestrators`)."""
        return f"{self.prefix}{INGRESS_TAG}:control"

    @property
    def pools(self) -> str:
        """Set of the ids of live pools."""
        return f"{self.prefix}pools"

    @property
    def events(self) -> str:
        """Trimmed broadcast stream: pool lifecycle, status updates, completions, heartbeats."""
        return f"{self.prefix}{{events}}"

    @property
    def delayed(self) -> str:
        """Sorted set of tasks waiting for a retry, scored by due time."""
        return f"{self.prefix}delayed"

    @property
    def dlq(self) -> str:
        """Stream of dead letters, each with its reason."""
        return f"{self.prefix}{{dlq}}"

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

    def pool_memory_sync(self, pool_id: str) -> str:
        """Hash: memory sync counters of the pool per destination (`<dest>:synced`, `:lost`,
        `:skipped`, `:last_success`, `:last_error`, `:last_error_at`); the watermark itself
        is the consumer group `memsync:<dest>` on the pool's memory stream."""
        return f"{self.prefix}pool:{{{pool_id}}}:memsync"

    @property
    def memory_sync_pools(self) -> str:
        """Set: pools whose memory streams the aggregator syncs, closed ones included until
        their stream expired and nothing of it is left to send."""
        return f"{self.prefix}memsync:pools"

    @property
    def memory_sync_status(self) -> str:
        """Hash: per memory-sync destination `<dest>:last_success`, `:last_error`,
        `:last_error_at` (a failure to reach a service belongs to no pool)."""
        return f"{self.prefix}memsync:status"

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
        """Hash with TTL: the look-up of a task by id — where its state lives (`home`: the pool
        whose `pool_task` holds it), the flags that must outlive a move between pools
        (`cancel_requested`, `routed_from`), and the whole state while the task has no pool
        yet. In the ingress slot, so a batch of them is written by one script."""
        return f"{self.prefix}{INGRESS_TAG}:task:{task_id}"

    def pool_task(self, pool_id: str, task_id: str) -> str:
        """Hash with TTL: the state and result of a task queued on the pool, in its slot."""
        return f"{self.prefix}pool:{{{pool_id}}}:task:{task_id}"

    def task_progress(self, pool_id: str, task_id: str) -> str:
        """Stream with TTL, in the pool's slot: the live output of a task running on the pool
        (`output` chunks, bounded and rate-limited; only tasks that print something have one)."""
        return f"{self.prefix}pool:{{{pool_id}}}:progress:{task_id}"

    def task_state(self, task_id: str, home: str | None) -> str:
        """The hash holding a task's state: its `pool_task` in `home`, or its `task` hash while
        it has no pool (`home` empty)."""
        return self.pool_task(home, task_id) if home else self.task(task_id)

    def replies(self, client_id: str) -> str:
        """Stream with TTL: results for one client."""
        return f"{self.prefix}replies:{{{client_id}}}"

    def sent_marker(self, stream: str, token: str) -> str:
        """String with TTL, in `stream`'s slot: the entries of the batch `token` were added to
        `stream`, so a writer retrying after a lost reply does not add them twice."""
        if "{" not in stream:
            raise ValueError(f"{stream!r} carries no hash tag: a marker could not share its slot")
        return f"{stream}:sent:{token}"

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
            if tail.startswith(":task:"):
                return "pool_task"
            if tail.startswith(":progress:"):
                return "task_progress"
            return f"pool{tail.replace(':', '_')}" if tail else "pool"
        if rest.startswith(INGRESS_TAG + ":"):  # "tasks" (the ingress), "control" or "task"
            return rest[len(INGRESS_TAG) + 1 :].split(":", 1)[0]
        if rest.startswith("{"):  # {events}, {dlq}, and their sent markers
            name, _, tail = rest[1:].partition("}")
            return f"{name}_sent" if tail.startswith(":sent:") else name
        if ":sent:" in rest:
            return rest.split(":", 1)[0] + "_sent"
        head = rest.split(":", 1)[0]
        return head
