"""Recording final results: once per task id, announced the same way by every writer.

Writers of a final result (a worker, an orchestrator that dead-letters or gives up routing) go
through `finalize_results`: task hash, the caller's reply stream, a TASK_COMPLETED event, a
memory record, the pool's counters, a dead letter for a dead-lettered task and the shares with
other pools' inboxes. A client cancelling a queued task makes it final in one script
(`CANCEL_TASK`) and then announces it with `announce`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.codec import (
    ResultShare,
    encode,
    encode_result,
    pack,
)
from shared.config import Settings
from shared.connection import Redis, ack_and_delete, text
from shared.errors import inbox_error
from shared.models import TaskResult, TaskSpec, TaskStatus
from shared.scripts import Scripts, add_counted, flat_fields

log = logging.getLogger("mahavishnu.finals")


@dataclass
class FinalResult:
    """A final result to record, with what is needed to announce it."""

    result: TaskResult
    reply_to: str | None = None
    summary: str = ""
    tags: list[str] = field(default_factory=list)
    token: str = ""  # the writer's id for this delivery: a retried write is recognised
    history: list[str] = field(default_factory=list)  # one line per failed attempt
    spec: TaskSpec | None = None  # kept in a dead letter, so it can be requeued
    share_with: list[str] = field(default_factory=list)  # pools whose inboxes get the result


Ack = tuple[str, str, Sequence[bytes]]
"""Entries to acknowledge and delete with a batch: (stream, group, entry ids)."""


async def finalize_results(
    redis: Redis,
    scripts: Scripts,
    settings: Settings,
    finals: Sequence[FinalResult],
    *,
    ack: Ack | None = None,
    extra: Callable[[Any], None] | None = None,
) -> list[bool]:
    """Record final results once per task id, announce the ones that were new, acknowledge.

    The task hash, the caller's reply, a TASK_COMPLETED event, a memory record, the pool's
    counters, a dead letter (for a dead-lettered result) and the shares with other pools' inboxes
    are written for each result recorded now; a result whose task is already final is left out.
    On a standalone server that is one script for the whole batch, atomic with the
    acknowledgement of `ack`'s entries. On Redis Cluster (`redis_cluster`) it is one script per
    task (a guarded write), then the announcements and the acknowledgement, then the shares.
    `extra(pipe)`, if given, queues more commands that run before the acknowledgement.
    Returns, per result, whether it was recorded now (False: the task was already final).
    """
    if settings.redis_cluster:
        return await _finalize_per_slot(redis, scripts, settings, finals, ack=ack, extra=extra)
    if not finals and not (ack and ack[2]) and extra is None:
        return []
    pipe = redis.pipeline(transaction=False)
    if extra is not None:
        extra(pipe)
    now = time.time()
    batches = [_CompleteBatch(settings, now)]
    for final in finals:
        if batches[-1].count and batches[-1].size >= BATCH_SCRIPT_BYTES:
            batches.append(_CompleteBatch(settings, now))
        batches[-1].add(final)
    for position, batch in enumerate(batches, 1):
        # the acknowledgement goes with the last call: after a lost reply, the retry finds the
        # earlier calls' tasks final and announces nothing twice
        keys, args = batch.call(ack if position == len(batches) else None)
        scripts.queue(pipe, scripts.complete_batch, keys, args)
    replies = await scripts.execute(pipe)
    written: list[bool] = []
    for flags, problems in replies[-len(batches) :]:
        written += [bool(int(flag)) for flag in flags]
        for problem in problems:
            log.warning("%s", text(problem))
    return written


BATCH_SCRIPT_BYTES = 8 * 1024 * 1024
"""About the most bytes of results one `COMPLETE_BATCH` call carries; a larger batch is split
into several calls in the same round trip (Redis holds a whole command in memory to run it)."""


class _CompleteBatch:
    """KEYS and ARGV of one `COMPLETE_BATCH` call (the layout is documented with the script)."""

    def __init__(self, settings: Settings, now: float) -> None:
        self._settings = settings
        keys = settings.keys
        self._keys = [keys.events, keys.dlq]
        self._index: dict[str, int] = {keys.events: 1, keys.dlq: 2}
        self._head: list[Any] = [
            settings.result_ttl,
            settings.reply_ttl,
            settings.events_max_len,
            settings.memory_max_len,
            settings.dlq_max_len,
            repr(now),
        ]
        self._body: list[Any] = []
        self.count = 0
        self.size = 0  # bytes of the results' own payloads, roughly

    def _ref(self, key: str) -> int:
        found = self._index.get(key)
        if found is None:
            self._keys.append(key)
            found = self._index[key] = len(self._keys)
        return found

    def add(self, final: FinalResult) -> None:
        """Add one result."""
        settings, keys, args, ref = self._settings, self._settings.keys, self._body, self._ref
        res = final.result
        pool_id = res.pool_id or ""
        dump = res.model_dump(mode="json", exclude_defaults=True)
        hash_fields = result_hash_fields(res, dump)
        shared, event = encode_result(res, dump, from_pool=res.pool_id)
        args += [ref(keys.task(res.task_id)), final.token, res.task_id, pool_id]
        add_counted(args, hash_fields)
        reply = ref(keys.replies(final.reply_to)) if final.reply_to else 0
        args.append(reply)
        add_counted(args, shared if reply or final.share_with else {})
        add_counted(args, event)
        if pool_id:
            record = memory_record(settings, final, pool_id=pool_id)
            args.append(ref(keys.pool_memory(pool_id)))
            add_counted(args, record)
            done, ms, failed = _counts(res)
            args += [ref(keys.pool_load(pool_id)), done, repr(ms), failed]
            self.size += len(record["output"])
        else:
            args += [0, 0, 0, 0, "0", 0]
        if res.status is TaskStatus.DEAD_LETTERED:
            add_counted(args, _final_dead_letter(final))
        else:
            args.append(0)
        args.append(len(final.share_with))
        for target in final.share_with:
            args += [ref(keys.pool(target)), ref(keys.pool_inbox(target)), target]
        self.count += 1
        body = shared["body"]
        self.size += len(hash_fields["result"]) + (len(body) if isinstance(body, bytes) else 0)

    def call(self, ack: Ack | None) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the call, acknowledging `ack`'s entries after the results."""
        tail: list[Any] = [0, "", 0]
        if ack is not None and ack[2]:
            stream, group, ids = ack
            tail = [self._ref(stream), group, len(ids), *ids]
        return self._keys, [*self._head, self.count, *self._body, *tail]


def _counts(res: TaskResult) -> tuple[int, float, int]:
    """What a result adds to its pool's counters: (completed, milliseconds, failed)."""
    if res.status is TaskStatus.COMPLETED:
        return 1, res.duration * 1000.0, 0
    if res.status in (TaskStatus.FAILED, TaskStatus.DEAD_LETTERED):
        return 0, 0.0, 1
    return 0, 0.0, 0


def result_hash_fields(
    res: TaskResult, dump: dict[str, Any] | None = None
) -> dict[str, str | bytes]:
    """The fields a final result sets on its task hash (`dump`: its dump without defaults)."""
    if dump is None:
        dump = res.model_dump(mode="json", exclude_defaults=True)
    fields: dict[str, str | bytes] = {
        "status": str(res.status),
        "result": pack(dump),
        "finished_at": repr(res.finished_at or time.time()),
        "attempts": str(res.attempts),
    }
    if res.pool_id:
        fields["pool"] = res.pool_id
    if res.worker_id:
        fields["worker"] = res.worker_id
    if res.error:
        fields["error"] = res.error[:2000]
    return fields


def _final_dead_letter(final: FinalResult) -> dict[str, str | bytes]:
    res = final.result
    return dead_letter_record(
        task_id=res.task_id,
        pool_id=res.pool_id,
        reason=res.error or "",
        attempts=res.attempts,
        history=final.history,
        spec=final.spec,
    )


async def _finalize_per_slot(
    redis: Redis,
    scripts: Scripts,
    settings: Settings,
    finals: Sequence[FinalResult],
    *,
    ack: Ack | None,
    extra: Callable[[Any], None] | None,
) -> list[bool]:
    """`finalize_results` with scripts of one slot each (Redis Cluster): three round trips."""
    keys = settings.keys
    pipe = redis.pipeline(transaction=False)
    for final in finals:
        scripts.queue(
            pipe,
            scripts.finalize_task,
            [keys.task(final.result.task_id)],
            [settings.result_ttl, final.token, *flat_fields(result_hash_fields(final.result))],
        )
    written = [bool(x) for x in await scripts.execute(pipe)] if finals else []
    pipe = redis.pipeline(transaction=False)
    fresh = [final for final, new in zip(finals, written, strict=True) if new]
    announce(pipe, settings, fresh)
    for final in fresh:
        if final.result.status is TaskStatus.DEAD_LETTERED:
            queue_dead_letter(pipe, settings, _final_dead_letter(final))
        pipe.hset(keys.task(final.result.task_id), "announced", "1")
    if extra is not None:
        extra(pipe)
    if ack is not None and ack[2]:
        ack_and_delete(pipe, *ack)
    if len(pipe):
        await scripts.execute(pipe)
    shares = [(final, target) for final in fresh for target in final.share_with]
    if shares:
        await _share_per_slot(redis, scripts, settings, shares)
    return written


async def _share_per_slot(
    redis: Redis, scripts: Scripts, settings: Settings, shares: list[tuple[FinalResult, str]]
) -> None:
    """Send results to the inboxes their tasks named; a full inbox is dead-lettered, loudly."""
    keys = settings.keys
    pipe = redis.pipeline(transaction=False)
    for final, target in shares:
        message = ResultShare(result=final.result, from_pool=final.result.pool_id)
        scripts.queue(
            pipe,
            scripts.send_to_inbox,
            [keys.pool(target), keys.pool_inbox(target)],
            flat_fields(dict(encode(message))),
        )
    replies = await scripts.execute(pipe, raise_on_error=False)
    pipe = redis.pipeline(transaction=False)
    for (final, target), reply in zip(shares, replies, strict=True):
        if isinstance(reply, Exception):
            reason = f"result not shared with pool {target}: {inbox_error(target, reply)}"
            log.warning("%s: %s", final.result.task_id, reason)
            queue_dead_letter(
                pipe,
                settings,
                dead_letter_record(
                    task_id=final.result.task_id, pool_id=final.result.pool_id, reason=reason
                ),
            )
    if len(pipe):
        await pipe.execute()


def announce(pipe: Any, settings: Settings, finals: Sequence[FinalResult]) -> None:
    """Queue the replies, TASK_COMPLETED events, memory records and pool counters of results.

    Per result: its reply, its event and its memory record. Per batch: one EXPIRE per reply
    stream and one counter update per pool.
    """
    keys = settings.keys
    reply_streams: set[str] = set()
    counts: dict[str, list[float]] = {}  # pool -> [completed, total_ms, failed]
    for final in finals:
        res = final.result
        dump = res.model_dump(mode="json", exclude_defaults=True)
        shared, event = encode_result(res, dump, from_pool=res.pool_id)
        if final.reply_to:
            reply_key = keys.replies(final.reply_to)
            reply_streams.add(reply_key)
            pipe.xadd(reply_key, shared)
        pipe.xadd(keys.events, event, maxlen=settings.events_max_len, approximate=True)
        if res.pool_id:
            queue_memory_record(pipe, settings, final, pool_id=res.pool_id)
            count = counts.setdefault(res.pool_id, [0, 0.0, 0])
            for position, amount in enumerate(_counts(res)):
                count[position] += amount
    for reply_key in reply_streams:
        pipe.expire(reply_key, settings.reply_ttl)
    for pool_id, (completed, total_ms, failed) in counts.items():
        load_key = keys.pool_load(pool_id)
        if completed:
            pipe.hincrby(load_key, "completed", int(completed))
            pipe.hincrbyfloat(load_key, "total_ms", total_ms)
        if failed:
            pipe.hincrby(load_key, "failed", int(failed))


def dead_letter_record(
    *,
    task_id: str,
    pool_id: str | None,
    reason: str,
    attempts: int = 0,
    raw: Mapping[Any, Any] | None = None,
    history: list[str] | None = None,
    spec: TaskSpec | None = None,
) -> dict[str, str | bytes]:
    """One dead-letter record: the task, its pool, why, and the raw entry if unreadable."""
    record: dict[str, str | bytes] = {
        "task": task_id,
        "pool": pool_id or "",
        "reason": reason,
        "attempts": str(attempts),
        "at": repr(time.time()),
    }
    if raw is not None:
        record["raw"] = pack({text(k): v for k, v in raw.items()})
    if history:
        record["history"] = json.dumps(history)
    if spec is not None:
        record["spec"] = spec.model_dump_json()
    return record


def malformed_entry_record(
    stream: str, entry_id: bytes, fields: Mapping[Any, Any], reason: str, *, pool_id: str | None
) -> dict[str, str | bytes]:
    """The dead-letter record of a stream entry that could not be used, with its raw fields."""
    return dead_letter_record(
        task_id=text(fields.get(b"task")),
        pool_id=pool_id,
        reason=f"malformed entry {text(entry_id)} on {stream}: {reason}",
        raw=fields,
    )


def queue_dead_letter(pipe: Any, settings: Settings, record: Mapping[str, str | bytes]) -> None:
    """Queue a dead-letter record (`dead_letter_record`) on the bounded dead-letter stream."""
    pipe.xadd(settings.keys.dlq, record, maxlen=settings.dlq_max_len, approximate=True)


def memory_record(settings: Settings, final: FinalResult, *, pool_id: str) -> dict[str, str]:
    """The memory record of a result: what was asked and a bounded output."""
    res = final.result
    output = res.output if isinstance(res.output, str) else json.dumps(res.output, default=str)
    limit = settings.memory_output_chars
    return {
        "task": res.task_id,
        "pool": res.pool_id or pool_id,
        "worker": res.worker_id or "",
        "status": str(res.status),
        "prompt": final.summary,
        "output": output[:limit],
        "error": (res.error or "")[:limit],
        "duration": f"{res.duration:.6f}",
        "finished_at": repr(res.finished_at or time.time()),
        "tags": ",".join(final.tags),
    }


def queue_memory_record(pipe: Any, settings: Settings, final: FinalResult, *, pool_id: str) -> None:
    """Queue the memory record of a result on a pool's memory stream."""
    pipe.xadd(
        settings.keys.pool_memory(pool_id),
        memory_record(settings, final, pool_id=pool_id),
        maxlen=settings.memory_max_len,
        approximate=True,
    )
