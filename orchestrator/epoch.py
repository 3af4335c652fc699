"""Noticing that Redis lost its data, and putting back what the orchestrators supervise.

A Redis restarted without persistence (or flushed) answers as if nothing had ever run: pools,
groups and leases are gone, and every process would go on against an empty server. The
deployment epoch is a hash that the first orchestrator writes and every orchestrator reads each
tick: when an orchestrator that has seen it finds it gone (or replaced), Redis lost its data.
That orchestrator then re-registers, from its last view, every pool it knew of: the pool hash
(spec, status, target), the live-pool set, the consumer group of the pool's streams and, for the
pools it supervised, its lease. Workers re-join by themselves (they re-create their group and
re-add themselves to the pool's set every beat). Tasks whose records were lost are not
recovered: callers waiting on them are told (`TaskStateLost`). The epoch then records when the
loss was seen, which `pool health` reports.
"""

from __future__ import annotations

import logging
import time

from orchestrator.records import Records
from orchestrator.supervisor import PoolView
from shared.codec import StatusUpdate
from shared.connection import ensure_group
from shared.keys import ORCHESTRATOR_GROUP, WORKER_GROUP
from shared.models import PoolStatus, new_id
from shared.replies import queued, text
from shared.state import pool_hash_fields

log = logging.getLogger("mahavishnu.orchestrator")


class Epoch:
    """The deployment epoch as one orchestrator knows it."""

    def __init__(self, records: Records, lease_ms: int) -> None:
        self.records = records
        self.redis = records.redis
        self.keys = records.keys
        self.settings = records.settings
        self.owner_id = records.owner_id
        self.lease_ms = lease_ms
        self.id: str | None = None  # the epoch this orchestrator has seen

    async def join(self) -> None:
        """Read the epoch, creating it if this is the first orchestrator ever."""
        fields = {"id": new_id("e"), "created_at": repr(time.time()), "by": self.owner_id}
        pipe = self.redis.pipeline(transaction=False)
        pipe.hsetnx(self.keys.epoch, "id", fields["id"])
        pipe.hsetnx(self.keys.epoch, "created_at", fields["created_at"])
        current = queued(pipe, pipe.hget(self.keys.epoch, "id"))
        self.id = text(current.reply(await pipe.execute()))

    async def lost(self) -> bool:
        """Whether the epoch this orchestrator saw is gone (Redis lost its data)."""
        if self.id is None:
            await self.join()
            return False
        current = await self.redis.hget(self.keys.epoch, "id")
        return current is None or text(current) != self.id

    async def restore(self, views: dict[str, PoolView]) -> int:
        """Re-register the pools in `views` (this orchestrator's last view of them) and mark
        the epoch with the loss; returns how many pools were put back."""
        keys = self.keys
        for stream in (keys.ingress, keys.control):
            await ensure_group(self.redis, stream, ORCHESTRATOR_GROUP)
        restored = 0
        for pool_id, view in views.items():
            if view.status in (PoolStatus.CLOSED, PoolStatus.FAILED):
                continue
            if await self.redis.exists(keys.pool(pool_id)):
                continue  # another orchestrator put it back first
            await ensure_group(self.redis, keys.pool_tasks(pool_id), WORKER_GROUP)
            detail = "re-registered after Redis lost its data"
            fields = pool_hash_fields(
                view.spec,
                view.status,
                created_at=view.raw.get("created_at", repr(time.time())),
                target_workers=view.target,
                detail=detail,
            )
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(keys.pool(pool_id), mapping=fields)
            pipe.sadd(keys.pools, pool_id)
            if view.lease == self.owner_id:
                pipe.set(keys.pool_lease(pool_id), self.owner_id, px=self.lease_ms)
            update = StatusUpdate(pool_id=pool_id, status=view.status, detail=detail)
            self.records.publish(pipe, update)
            await pipe.execute()
            restored += 1
        now = time.time()
        what = (
            "Redis answered without the deployment epoch: its data was lost (restarted "
            f"without persistence, or flushed); orchestrator {self.owner_id} re-registered "
            f"{restored} pool(s); tasks queued or running then were lost with it"
        )
        new = {"id": new_id("e"), "created_at": repr(now), "by": self.owner_id}
        pipe = self.redis.pipeline(transaction=False)
        for name, value in new.items():
            pipe.hsetnx(keys.epoch, name, value)
        pipe.hset(keys.epoch, mapping={"lost_at": repr(now), "lost": what})
        pipe.hget(keys.epoch, "id")
        *_, current = await pipe.execute()
        self.id = current.decode() if isinstance(current, bytes) else str(current)
        log.error("%s", what)
        return restored
