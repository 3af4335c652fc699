"""What an orchestrator writes about tasks and pools: final results of tasks it gives up on,
dead letters, pool status changes and the events that announce them."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from shared.codec import StatusUpdate, TaskDelegate, _Message, encode
from shared.config import Settings
from shared.connection import Pipeline, Redis, ack_and_delete
from shared.finals import (
    FinalResult,
    finalize_results,
    malformed_entry_record,
    queue_dead_letter,
)
from shared.keys import ORCHESTRATOR_GROUP
from shared.models import FINAL_STATUSES, PoolStatus, TaskResult, TaskStatus
from shared.replies import queued, text
from shared.retries import with_line
from shared.scripts import Scripts, flat_fields

log = logging.getLogger("mahavishnu.orchestrator")

FINAL_STATUS_VALUES = frozenset(str(s) for s in FINAL_STATUSES)

BadEntry = tuple[bytes, str, dict[bytes, bytes]]
"""An entry that could not be used: its id, why, and its raw fields."""


class Records:
    """Writes an orchestrator's results, dead letters and pool statuses."""

    def __init__(self, redis: Redis, scripts: Scripts, settings: Settings, owner_id: str) -> None:
        self.redis = redis
        self.scripts = scripts
        self.settings = settings
        self.keys = settings.keys
        self.owner_id = owner_id

    def publish(self, pipe: Pipeline, message: _Message) -> None:
        """Queue a message on the events stream."""
        pipe.xadd(
            self.keys.events, encode(message), maxlen=self.settings.events_max_len, approximate=True
        )

    def queue_malformed(
        self,
        pipe: Pipeline,
        stream: str,
        bad: list[BadEntry],
        *,
        group: str = ORCHESTRATOR_GROUP,
        pool_id: str | None = None,
    ) -> None:
        """Dead-letter unusable entries with the reason, and acknowledge them."""
        for entry_id, reason, fields in bad:
            log.warning("dead-lettered entry %s on %s: %s", text(entry_id), stream, reason)
            record = malformed_entry_record(stream, entry_id, fields, reason, pool_id=pool_id)
            queue_dead_letter(pipe, self.settings, record)
        ack_and_delete(pipe, stream, group, [b for b, _, _ in bad])

    async def fail(
        self,
        failures: list[tuple[TaskDelegate, str]],
        *,
        status: TaskStatus = TaskStatus.FAILED,
        pool_id: str | None = None,
        ack: tuple[str, str, list[bytes]] | None = None,
        homes: list[str] | None = None,
    ) -> None:
        """Give tasks a final failed (or dead-lettered) result and acknowledge their entries.

        `homes` names the pool whose slot holds each task's state; by default `pool_id`'s, or
        (with no `pool_id`: tasks that were never routed, or wait to be routed again) the one
        each task's `task` hash names.
        """
        now = time.time()
        if homes is None:
            homes = (
                [pool_id] * len(failures)
                if pool_id
                else await self.homes([msg.task.id for msg, _ in failures])
            )
        finals = [
            FinalResult(
                TaskResult(
                    task_id=msg.task.id,
                    pool_id=pool_id,
                    status=status,
                    error=reason,
                    attempts=msg.attempt,
                    finished_at=now,
                ),
                msg.task.reply_to,
                msg.task.describe(),
                list(msg.task.tags),
                token=f"{self.owner_id}/{msg.task.id}/{msg.attempt}",
                history=with_line(msg.history, reason),
                spec=msg.task,
                home=home,
                submitted_at=msg.task.submitted_at,
            )
            for (msg, reason), home in zip(failures, homes, strict=True)
        ]
        await finalize_results(self.redis, self.scripts, self.settings, finals, ack=ack)

    async def homes(self, task_ids: list[str]) -> list[str]:
        """The pool whose slot holds each task's state ('' for none), from its `task` hash."""
        pipe = self.redis.pipeline(transaction=False)
        reads = [queued(pipe, pipe.hget(self.keys.task(t), "home")) for t in task_ids]
        replies = await pipe.execute() if task_ids else []
        return [text(home.reply(replies)) for home in reads]

    async def finished(self, pool_id: str, messages: list[TaskDelegate]) -> dict[str, bool]:
        """Of tasks queued on a pool, the ones whose state is final: task id -> announced."""
        if not messages:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        reads = []
        for msg in messages:
            state = self.keys.pool_task(pool_id, msg.task.id)
            reads.append((msg, queued(pipe, pipe.hmget(state, ["status", "announced"]))))
        replies = await pipe.execute()
        found: dict[str, bool] = {}
        for msg, read in reads:
            status, announced = read.reply(replies)
            if text(status) in FINAL_STATUS_VALUES:
                found[msg.task.id] = text(announced) == "1"
        return found

    async def set_pool_status(
        self,
        pool_id: str,
        status: PoolStatus,
        detail: str = "",
        *,
        expect: Iterable[PoolStatus],
        **extra: Any,
    ) -> bool:
        """Set a pool's status if it is still one of `expect`, and announce it. True if set.

        The check and the write are one script, so a stale view cannot overwrite a newer status
        (e.g. turn a `closing` pool back to `running`).
        """
        fields = {"status": str(status), "detail": detail, **{k: str(v) for k, v in extra.items()}}
        written = await self.scripts.set_pool_status(
            keys=[self.keys.pool(pool_id)],
            args=[",".join(str(s) for s in expect), *flat_fields(fields)],
        )
        if not written:
            return False
        pipe = self.redis.pipeline(transaction=False)
        self.publish(pipe, StatusUpdate(pool_id=pool_id, status=status, detail=detail))
        await pipe.execute()
        log.info("pool %s is %s %s", pool_id, status, detail)
        return True
