"""Taking work back: entries of dead workers or past their deadline, due retries, and the
ingress and control entries of dead orchestrators.

An entry is taken from a worker only when the worker's heartbeat has expired or the task's own
timeout plus `task_deadline_grace` has passed — never for being old, so a long task on a live
worker runs once. XCLAIM's min-idle time makes two reclaimers racing for one entry safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from redis.exceptions import RedisError

from orchestrator.records import BadEntry, Records
from shared.codec import TaskDelegate, decode, encode
from shared.connection import ack_and_delete
from shared.errors import MalformedMessage
from shared.finals import announce_stored, dead_letter_record, queue_dead_letter
from shared.hooks import HOOKS
from shared.keys import ORCHESTRATOR_GROUP, WORKER_GROUP
from shared.models import ACCEPTING_STATUSES, TaskStatus
from shared.replies import (
    Entry,
    pending_consumers,
    pending_entries,
    plain_members,
    queued,
    stream_entries,
)
from shared.retries import dead_letter_reason, queue_retry, read_retry

log = logging.getLogger("mahavishnu.orchestrator")

RECLAIM_MIN_IDLE_MS = 500
RETRY_BATCH = 500


class Reclaimer:
    """Finds and re-queues work that its holder can no longer finish."""

    def __init__(self, records: Records, lease_ms: int) -> None:
        self.records = records
        self.scripts = records.scripts
        self.redis = records.redis
        self.settings = records.settings
        self.keys = records.keys
        self.owner_id = records.owner_id
        self.lease_ms = lease_ms

    async def pending_summaries(self, pool_ids: list[str]) -> dict[str, dict[str, Any]]:
        """`XPENDING` of these pools' task streams, in one round trip (an error: left out)."""
        pipe = self.redis.pipeline(transaction=False)
        reads = [
            (p, queued(pipe, pipe.xpending(self.keys.pool_tasks(p), WORKER_GROUP)))
            for p in pool_ids
        ]
        try:
            replies = await pipe.execute(raise_on_error=False) if pool_ids else []
        except RedisError:
            return {}
        return {
            pool_id: summary
            for pool_id, read in reads
            if not isinstance(summary := read.reply_or_error(replies), Exception)
        }

    async def pool_entries(
        self, pool_id: str, live: set[str], summary: Mapping[str, Any] | None
    ) -> None:
        """Take back a pool's entries held by dead consumers (not in `live`) or past deadline.

        `summary` is the stream's `XPENDING` summary (`pending_summaries`).
        """
        stream = self.keys.pool_tasks(pool_id)
        consumers = pending_consumers(summary)
        if not consumers:
            return
        lost: list[tuple[bytes, str]] = []
        for name in consumers:
            if name in live:
                continue
            ids = pending_entries(
                await self.redis.xpending_range(
                    stream, WORKER_GROUP, min="-", max="+", count=1000, consumername=name
                )
            )
            lost.extend((p.entry_id, f"worker {name} died") for p in ids)
            if not ids:
                await self.redis.xgroup_delconsumer(stream, WORKER_GROUP, name)
        lost.extend(await self._overdue(stream, live))
        if lost:
            await self._requeue(stream, pool_id, lost)

    async def _overdue(self, stream: str, live: set[str]) -> list[tuple[bytes, str]]:
        """Entries on live workers whose task's timeout plus grace has passed."""
        grace = self.settings.task_deadline_grace
        pending = pending_entries(
            await self.redis.xpending_range(
                stream, WORKER_GROUP, min="-", max="+", count=200, idle=int(grace * 1000)
            )
        )
        candidates = {p.entry_id: p for p in pending if p.consumer in live}
        if not candidates:
            return []
        pipe = self.redis.pipeline(transaction=False)
        reads = [queued(pipe, pipe.xrange(stream, min=i, max=i)) for i in candidates]
        replies = await pipe.execute()
        overdue = []
        for read in reads:
            for entry_id, fields in stream_entries(read.reply(replies)):
                try:
                    msg = decode(fields)
                except MalformedMessage:
                    continue
                if not isinstance(msg, TaskDelegate):
                    continue
                held = candidates[entry_id]
                if held.idle_ms >= (msg.task.timeout + grace) * 1000:
                    overdue.append((entry_id, f"attempt passed its deadline on {held.consumer}"))
        return overdue

    async def _requeue(self, stream: str, pool_id: str, lost: list[tuple[bytes, str]]) -> None:
        """Claim lost entries, re-queue each as its next attempt (or dead-letter it)."""
        reasons = dict(lost)
        claimed, done = await self._claim(stream, WORKER_GROUP, list(reasons))
        pipe = self.redis.pipeline(transaction=False)
        dead: list[tuple[TaskDelegate, str]] = []
        bad: list[BadEntry] = []
        readable: list[tuple[bytes, TaskDelegate]] = []
        for entry_id, fields in claimed:
            if not fields:
                done.append(entry_id)
                continue
            try:
                msg = decode(fields)
                if not isinstance(msg, TaskDelegate):
                    raise MalformedMessage(f"a {msg.type} message on a pool stream")
            except MalformedMessage as exc:
                bad.append((entry_id, str(exc), fields))
                continue
            readable.append((entry_id, msg))
        finished = await self.records.finished(pool_id, [m for _, m in readable])
        unannounced: list[tuple[str, str]] = []
        retried = 0
        for entry_id, msg in readable:
            announced = finished.get(msg.task.id)
            if announced is not None:  # its result is recorded: nothing runs again
                if not announced:
                    unannounced.append((pool_id, msg.task.id))
                done.append(entry_id)
                continue
            reason = reasons.get(entry_id, "lost")
            if msg.attempt >= msg.task.max_attempts:
                dead.append((msg, dead_letter_reason(msg.attempt, reason)))
            else:  # the same policy as a failed attempt's: backoff, then a direct task goes
                # back to its pool and a routed one through the ingress
                retried += 1
                line = f"attempt {msg.attempt}: {reason}"
                queue_retry(
                    pipe,
                    self.settings,
                    self.scripts,
                    msg,
                    pool_id=msg.task.pool_id or "",
                    home=pool_id,
                    line=line,
                    error=reason,
                )
            done.append(entry_id)
        self.records.queue_malformed(pipe, stream, bad, group=WORKER_GROUP, pool_id=pool_id)
        if dead:
            await self.records.fail(dead, status=TaskStatus.DEAD_LETTERED, pool_id=pool_id)
        if unannounced:  # its writer died between recording and announcing it
            await announce_stored(self.redis, self.scripts, self.settings, unannounced)
        ack_and_delete(pipe, stream, WORKER_GROUP, done)
        await self.scripts.execute(pipe)
        if HOOKS and claimed:
            HOOKS.reclaimed(pool_id, len(claimed))
            HOOKS.retried(pool_id, retried)
        if claimed:
            log.info("took back %d entr(ies) of pool %s", len(claimed), pool_id)

    async def _claim(
        self, stream: str, group: str, ids: list[bytes]
    ) -> tuple[list[Entry], list[bytes]]:
        """XCLAIM `ids` for this orchestrator: the entries it got, and the ids of entries
        deleted while pending, to acknowledge.

        Redis 7 drops a deleted entry from the pending list itself and leaves it out of the
        reply; Redis 6.2 claims it and answers it as nil, without its id: the ids asked for but
        not answered that the stream no longer holds are those.
        """
        reply = await self.redis.xclaim(
            stream, group, self.owner_id, min_idle_time=RECLAIM_MIN_IDLE_MS, message_ids=[*ids]
        )
        entries = stream_entries(reply)
        if len(entries) == len(reply):
            return entries, []
        answered = {entry_id for entry_id, _ in entries}
        missing = [i for i in ids if i not in answered]
        pipe = self.redis.pipeline(transaction=False)
        reads = [queued(pipe, pipe.xrange(stream, min=i, max=i)) for i in missing]
        replies = await pipe.execute()
        return entries, [
            i for i, read in zip(missing, reads, strict=True) if not read.reply(replies)
        ]

    async def due_retries(self, pool_status: dict[str, Any]) -> None:
        """Move retries whose time has come back into their pool's stream (or the ingress).

        Only the holder of the scheduler lease does this. `pool_status` maps live pool ids to
        their status; a retry for a pool that is gone fails with the reason.
        """
        got = await self.scripts.acquire_lease(
            keys=[self.keys.scheduler_lease], args=[self.owner_id, self.lease_ms]
        )
        if not got:
            return
        due = plain_members(
            await self.redis.zrangebyscore(
                self.keys.delayed, "-inf", time.time(), start=0, num=RETRY_BATCH
            )
        )
        if not due:
            return
        pipe = self.redis.pipeline(transaction=False)
        gone: list[tuple[TaskDelegate, str, str]] = []
        for member in due:
            try:
                pool_id, home, msg = read_retry(member)
            except MalformedMessage:
                queue_dead_letter(
                    pipe,
                    self.settings,
                    dead_letter_record(
                        task_id="",
                        pool_id=None,
                        reason=f"unreadable retry entry in {self.keys.delayed}",
                        raw={"member": member},
                    ),
                )
                continue
            if not isinstance(msg, TaskDelegate):
                queue_dead_letter(
                    pipe,
                    self.settings,
                    dead_letter_record(
                        task_id="",
                        pool_id=pool_id or None,
                        reason=f"a {msg.type} message in {self.keys.delayed}, not a task",
                        raw={"member": member},
                    ),
                )
                continue
            state = self.keys.task_state(msg.task.id, home)
            if not pool_id:
                pipe.xadd(self.keys.ingress, encode(msg))
                self.scripts.set_task(pipe, state, status=TaskStatus.PENDING)
            elif pool_status.get(pool_id) in ACCEPTING_STATUSES:
                pipe.xadd(self.keys.pool_tasks(pool_id), encode(msg))
                self.scripts.set_task(pipe, state, status=TaskStatus.QUEUED)
            else:
                gone.append((msg, f"pool {pool_id} is gone; the retry cannot run", home))
        if gone:  # before the members leave the set, so a failure here loses none
            await self.records.fail([(m, why) for m, why, _ in gone], homes=[h for *_, h in gone])
        # only the scheduler-lease holder moves retries; a stall longer than the lease could
        # move one twice (the result guard then records it once)
        pipe.zrem(self.keys.delayed, *due)
        await self.scripts.execute(pipe)

    async def orphaned_entries(self) -> dict[str, list[Entry]]:
        """Claim the ingress and control entries of orchestrators whose heartbeat expired.

        Returns them by stream, for the caller to route or carry out like fresh ones.
        """
        taken: dict[str, list[Entry]] = {}
        for stream in (self.keys.ingress, self.keys.control):
            try:
                summary = await self.redis.xpending(stream, ORCHESTRATOR_GROUP)
            except RedisError:
                continue
            for name in pending_consumers(summary):
                if name == self.owner_id or await self.redis.exists(self.keys.orchestrator(name)):
                    continue
                ids = pending_entries(
                    await self.redis.xpending_range(
                        stream, ORCHESTRATOR_GROUP, min="-", max="+", count=1000, consumername=name
                    )
                )
                if not ids:
                    await self.redis.xgroup_delconsumer(stream, ORCHESTRATOR_GROUP, name)
                    continue
                claimed, gone = await self._claim(
                    stream, ORCHESTRATOR_GROUP, [p.entry_id for p in ids]
                )
                entries = [(i, f) for i, f in claimed if f]
                gone += [i for i, f in claimed if not f]  # deleted meanwhile: just acknowledge
                if gone:
                    pipe = self.redis.pipeline(transaction=False)
                    ack_and_delete(pipe, stream, ORCHESTRATOR_GROUP, gone)
                    await pipe.execute()
                log.info("took over %d entr(ies) of dead orchestrator %s", len(entries), name)
                taken.setdefault(stream, []).extend(entries)
        return taken
