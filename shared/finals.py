"""Recording final results: once per task id, announced the same way by every writer.

Writers of a final result (a worker, an orchestrator that dead-letters or gives up routing, a
client cancelling a queued task) go through `finalize_results`, in three steps:

1. record: one COMPLETE_BATCH per state slot (a pool's, for the tasks queued on it: with the
   memory record and the pool's counters) writes each result unless the task is final;
2. announce, in the other slots: the caller's reply stream, a TASK_COMPLETED event, a dead
   letter for a dead-lettered task, the shares with other pools' inboxes;
3. mark the results announced and acknowledge the entries (ACK_ANNOUNCED), and delete the sent
   markers of step 2.

A worker defers step 3 (`finalize_deferring_ack`): it gets a `PendingAck` back, and its next
call sends that ACK_ANNOUNCED in step 1's round trip and the markers' DELs in step 2's, so under
load a flush is two round trips. A deferred step 3 is the state a writer that died after step 2
leaves anyway, so nothing is lost if it never comes; the worker sends it alone when no next call
follows soon, and always before it leaves (`worker/worker.py` `ACK_LINGER`).

A writer that dies after step 1 leaves its entry pending and the result `announced` 0. Whoever
next handles the entry (a worker reading it again: START_ANNOUNCE; reclaim; an orchestrator
taking over an ingress entry) announces the stored result, so no result is final but never
announced. Its XADD_MANY skips each stream the dead writer's sent markers show it reached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.codec import encode_result, pack
from shared.config import Settings
from shared.connection import Fields, Pipeline, Redis
from shared.errors import inbox_error
from shared.hooks import HOOKS, NO_POOL, Finished
from shared.keys import hash_tag
from shared.models import TaskResult, TaskSpec, TaskStatus
from shared.replies import Queued, hash_reply, queued, text
from shared.scripts import (
    FINAL_DONE,
    FINAL_NEW,
    FINAL_STORED,
    Scripts,
    flat_fields,
    packed_result,
    packed_task,
)
from shared.state import parse_task_result
from shared.task_state import RawHash, iso_time, output_head, output_json, share_targets

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
    # the pool whose slot holds the task's state (`Keys.task_state`); None: the result's pool
    home: str | None = None
    submitted_at: float | None = None
    # a stored result: the batch token its writer announced it under (`announce_token`), so a
    # repairer skips the streams that writer's sent markers show it reached
    announced_as: str = ""
    _dump: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def state_home(self) -> str:
        return self.home if self.home is not None else (self.result.pool_id or "")

    @property
    def dump(self) -> dict[str, Any]:
        """The result's JSON dump without defaults, made once (recording and announcing it
        both need it)."""
        if self._dump is None:
            self._dump = self.result.model_dump(mode="json", exclude_defaults=True)
        return self._dump


Ack = tuple[str, str, Sequence[bytes]]
"""Entries to acknowledge and delete with a batch: (stream, group, entry ids)."""


@dataclass(frozen=True)
class PendingAck:
    """Step 3 of a call that deferred it (`finalize_deferring_ack`): the results to mark
    announced, the entries to acknowledge and the sent markers to delete once that is done.

    Until it is sent, the results stay `announced` 0, the entries pending and the markers in
    place: what a writer that died after step 2 leaves, which every repairer handles."""

    announced: tuple[tuple[str, str], ...]  # (home, task id)
    ack: Ack | None
    markers: tuple[str, ...]

    @property
    def entry_ids(self) -> Sequence[bytes]:
        """The ids of the entries it acknowledges."""
        return self.ack[2] if self.ack is not None else ()


async def finalize_results(
    redis: Redis,
    scripts: Scripts,
    settings: Settings,
    finals: Sequence[FinalResult],
    *,
    ack: Ack | None = None,
    extra: Callable[[Any], None] | None = None,
    stored: Sequence[tuple[str, str]] = (),
) -> list[bool]:
    """Record final results once per task id, announce the ones that were new, acknowledge.

    The task's state, a memory record and the pool's counters are written for each result
    recorded now; its reply, TASK_COMPLETED event, dead letter and shares follow, then the
    acknowledgement of `ack`'s entries. A result whose task is already final is left out (and
    the stored result announced, if its writer never did). `stored` names (home, task id) of
    tasks known to be final but not announced: their stored results are announced too.
    `extra(pipe)`, if given, queues more commands that run before the acknowledgement.
    Returns, per result, whether it was recorded now (False: the task was already final).
    """
    recorded, _ = await _finalize(
        redis, scripts, settings, finals, ack, extra, stored, previous=None, defer=False
    )
    return recorded


async def finalize_deferring_ack(
    redis: Redis,
    scripts: Scripts,
    settings: Settings,
    finals: Sequence[FinalResult],
    *,
    previous: PendingAck | None,
    ack: Ack | None = None,
    extra: Callable[[Any], None] | None = None,
    stored: Sequence[tuple[str, str]] = (),
) -> tuple[list[bool], PendingAck | None]:
    """`finalize_results`, carrying step 3 from one call to the next.

    `previous` (the last call's `PendingAck`) is acknowledged in this call's first round trip
    and its sent markers deleted in the second, once that acknowledgement is known to be done.
    This call's own step 3 is returned instead of sent, unless a repair could not tell what
    it announced: `extra`'s commands (retries, dead letters of malformed entries) have no sent
    markers, a stored result was announced under this batch's markers but names its own
    writer's (`announce_token`), a refused share was dead-lettered; then it is sent now and
    None returned. A failed call is retried with the same `previous` (every step repeats
    safely). The caller sends what it holds with `acknowledge_pending` when no call follows.
    """
    return await _finalize(
        redis, scripts, settings, finals, ack, extra, stored, previous=previous, defer=True
    )


async def acknowledge_pending(
    redis: Redis, scripts: Scripts, settings: Settings, pending: PendingAck
) -> None:
    """Send a deferred step 3 alone (no next call came to carry it)."""
    await acknowledge(redis, scripts, settings, pending.announced, pending.ack, pending.markers)


async def _finalize(
    redis: Redis,
    scripts: Scripts,
    settings: Settings,
    finals: Sequence[FinalResult],
    ack: Ack | None,
    extra: Callable[[Any], None] | None,
    stored: Sequence[tuple[str, str]],
    *,
    previous: PendingAck | None,
    defer: bool,
) -> tuple[list[bool], PendingAck | None]:
    token = _batch_token(finals, stored)
    verdicts = await _record(redis, scripts, settings, finals, token, previous)
    fresh = [f for f, v in zip(finals, verdicts, strict=True) if v == FINAL_NEW]
    if HOOKS and fresh:
        HOOKS.finished([_finished(f) for f in fresh])
    pairs = list(zip(finals, verdicts, strict=True))
    again = [(f.state_home, f.result.task_id) for f, v in pairs if v == FINAL_STORED]
    recovered = await read_stored(redis, settings, [*again, *stored])
    done = fresh + recovered
    markers: list[str] = []
    dead = [f for f in done if f.result.status is TaskStatus.DEAD_LETTERED]
    if dead:  # before the replies: whoever sees a dead-lettered result finds its dead letter
        pipe = redis.pipeline(transaction=False)
        markers.append(_queue_dead_letters(pipe, scripts, settings, dead, token))
        await scripts.execute(pipe)
    # the previous call's acknowledgement went with step 1: its markers get their grace now
    stale = previous.markers if previous is not None else ()
    refused = False
    if done or extra is not None or stale:
        pipe = redis.pipeline(transaction=False)
        if extra is not None:
            extra(pipe)
        sent = announce(pipe, scripts, settings, done, token)
        for marker in stale:  # after the announcements: a repair in this batch reads them
            pipe.expire(marker, SENT_MARKER_GRACE)
        replies = await scripts.execute(pipe, raise_on_error=False)
        refused = await _report_share_failures(redis, settings, sent.shares, replies)
        markers += sent.markers
    announced = [(f.state_home, f.result.task_id) for f in done]
    recorded = [v == FINAL_NEW for v in verdicts]
    if defer and extra is None and not recovered and not refused:
        if not announced and not markers and (ack is None or not ack[2]):
            return recorded, None
        return recorded, PendingAck(tuple(announced), ack, tuple(markers))
    await acknowledge(redis, scripts, settings, announced, ack, markers)
    return recorded, None


def _finished(final: FinalResult) -> Finished:
    """What the `finished` hook is told of a result recorded now."""
    res = final.result
    end = res.finished_at or time.time()
    submitted = final.submitted_at or (final.spec.submitted_at if final.spec else None)
    return Finished(
        pool=res.pool_id or NO_POOL,
        status=res.status.value,
        duration=res.duration,
        end_to_end=end - submitted if submitted else None,
    )


async def _record(
    redis: Redis,
    scripts: Scripts,
    settings: Settings,
    finals: Sequence[FinalResult],
    token: str,
    previous: PendingAck | None = None,
) -> list[int]:
    """Step 1: COMPLETE_BATCH per state slot, each state noting the batch `token` it will be
    announced under, after the previous call's deferred step 3 (same round trip); the
    verdicts."""
    now = time.time()
    calls: list[tuple[_CompleteBatch, list[int]]] = []
    by_home: dict[str, tuple[_CompleteBatch, list[int]]] = {}
    for position, final in enumerate(finals):
        home = final.state_home  # '' (no pool yet): the look-ups, all in the ingress slot
        call = by_home.get(home)
        if call is None or (call[0].count and call[0].size >= BATCH_SCRIPT_BYTES):
            call = by_home[home] = (_CompleteBatch(settings, home, now, token), [])
            calls.append(call)
        call[0].add(final)
        call[1].append(position)
    pipe = redis.pipeline(transaction=False)
    if previous is not None:
        _queue_acks(pipe, scripts, settings, previous.announced, previous.ack)
    acks = len(pipe)
    for batch, _ in calls:
        keys, args = batch.call()
        scripts.queue(pipe, scripts.complete_batch, keys, args)
    replies = (await scripts.execute(pipe))[acks:] if len(pipe) else []
    verdicts = [FINAL_DONE] * len(finals)
    for (_, positions), reply in zip(calls, replies, strict=True):
        for position, verdict in zip(positions, reply, strict=True):
            verdicts[position] = int(verdict)
    return verdicts


BATCH_SCRIPT_BYTES = 8 * 1024 * 1024
"""About the most bytes of results one `COMPLETE_BATCH` call carries; a larger batch is split
into several calls in the same round trip (Redis holds a whole command in memory to run it)."""


class _CompleteBatch:
    """KEYS and ARGV of one `COMPLETE_BATCH` call in one slot (layout: `shared/scripts.py`)."""

    def __init__(self, settings: Settings, home: str, now: float, token: str) -> None:
        self._settings = settings
        self._token = token
        self._home = home
        self._keys: list[str] = []
        self._body: list[Any] = []
        self._now = now
        self.count = 0
        self.size = 0  # bytes of the results' own payloads, roughly

    def add(self, final: FinalResult) -> None:
        """Add one result."""
        settings, keys, args = self._settings, self._settings.keys, self._body
        res = final.result
        self._keys.append(keys.task_state(res.task_id, self._home))
        hash_fields = result_hash_fields(res, final.dump)
        # what announcing it needs, kept with it: whoever finds it unannounced can do that
        if final.reply_to:
            hash_fields["reply_to"] = final.reply_to
        if final.share_with:
            hash_fields["share_with"] = json.dumps(final.share_with)
        if res.status is TaskStatus.DEAD_LETTERED:
            hash_fields.update(_dead_letter_fields(final))
        if self._home and res.pool_id == self._home:
            record = memory_record(settings, final, pool_id=self._home)
            args.append(
                packed_result(len(self._keys), final.token, hash_fields, record, _counts(res))
            )
            self.size += len(record["output"])
        else:
            args.append(packed_result(len(self._keys), final.token, hash_fields))
        self.count += 1
        self.size += len(hash_fields["result"])

    def call(self) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the call."""
        keys = list(self._keys)
        memory = load = 0
        if self._home:
            keys += [self._settings.keys.pool_memory(self._home)]
            memory = len(keys)
            keys += [self._settings.keys.pool_load(self._home)]
            load = len(keys)
        head = [
            self._settings.result_ttl,
            self._settings.memory_max_len,
            memory,
            load,
            self.count,
            self._token,
        ]
        return keys, [*head, *self._body]


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
    """The fields a final result sets on its task's state (`dump`: its dump without defaults)."""
    if dump is None:
        dump = res.model_dump(mode="json", exclude_defaults=True)
    finished = res.finished_at or time.time()
    fields: dict[str, str | bytes] = {
        "status": str(res.status),
        "result": pack(dump),
        "finished_at": repr(finished),
        "finished": iso_time(finished),
        "attempts": str(res.attempts),
    }
    if res.output is not None:
        fields["output"] = output_head(res.output)
    if res.pool_id:
        fields["pool"] = res.pool_id
    if res.worker_id:
        fields["worker"] = res.worker_id
    if res.error:
        fields["error"] = res.error[:2000]
    return fields


def _dead_letter_fields(final: FinalResult) -> dict[str, str | bytes]:
    """What a dead-lettered result keeps in its state, so its dead letter can be rebuilt."""
    fields: dict[str, str | bytes] = {"history": json.dumps(final.history)}
    if final.spec is not None:
        fields["spec"] = final.spec.model_dump_json()
    return fields


def _final_dead_letter(final: FinalResult) -> Fields:
    res = final.result
    return dead_letter_record(
        task_id=res.task_id,
        pool_id=res.pool_id,
        reason=res.error or "",
        attempts=res.attempts,
        history=final.history,
        spec=final.spec,
    )


async def read_stored(
    redis: Redis, settings: Settings, tasks: Sequence[tuple[str, str]]
) -> list[FinalResult]:
    """The stored final results of (home, task id) pairs, to be announced by someone other than
    their writer; tasks whose state is gone, not final or announced by now (its writer got to
    step 3 meanwhile, and may have deleted the sent markers a repair would need) are left
    out."""
    if not tasks:
        return []
    keys = settings.keys
    pipe = redis.pipeline(transaction=False)
    reads = [(h, t, queued(pipe, pipe.hgetall(keys.task_state(t, h)))) for h, t in tasks]
    replies = await pipe.execute()
    found: list[FinalResult] = []
    for home, task_id, read in reads:
        raw = hash_reply(read.reply(replies))
        if raw and raw.get(b"announced") != b"1":
            final = stored_final(raw, task_id, home)
            if final is not None:
                found.append(final)
    return found


def stored_final(raw: RawHash, task_id: str, home: str) -> FinalResult | None:
    """A FinalResult rebuilt from a final task's state hash (None if it is not final)."""
    res = parse_task_result(raw, task_id)
    if not res.status.is_final:
        return None
    spec: TaskSpec | None = None
    history: list[str] = []
    if b"spec" in raw:
        try:
            spec = TaskSpec.model_validate_json(raw[b"spec"])
        except ValueError:
            spec = None
    if b"history" in raw:
        try:
            history = [str(line) for line in json.loads(raw[b"history"])]
        except (ValueError, TypeError):
            history = []
    return FinalResult(
        res,
        token=text(raw.get(b"final_token")),
        announced_as=text(raw.get(b"announce_token")),
        reply_to=text(raw.get(b"reply_to")) or None,
        history=history,
        spec=spec,
        share_with=share_targets(raw),
        home=home,
    )


SENT_MARKER_TTL = 3600
"""Seconds a sent marker (`Keys.sent_marker`) outlives a writer that died before step 3: a
retry, or a repair of that writer's batch, within this time adds no entry twice."""

SENT_MARKER_GRACE = 60
"""Seconds a sent marker stays after step 3 (which shortens its TTL to this instead of deleting
it): a repairer that read the result as unannounced just before the writer's step 3 still finds
the marker and adds nothing twice (a delete would open that window; on a cluster the delete and
the acknowledgement run on different nodes, in any order)."""


@dataclass
class Announcement:
    """What `announce` queued: the shares (to read their replies) and the sent markers."""

    shares: list[Share] = field(default_factory=list)
    markers: list[str] = field(default_factory=list)


def _batch_token(finals: Sequence[FinalResult], stored: Sequence[tuple[str, str]] = ()) -> str:
    """The same for the same call however often a writer retries: names its sent markers."""
    tokens = [f.token or f"task:{f.result.task_id}" for f in finals]
    tokens += [f"stored:{home}:{task_id}" for home, task_id in stored]
    return hashlib.sha1("\n".join(tokens).encode()).hexdigest()[:20]


def _share_token(final: FinalResult) -> str:
    """Names the sent marker of one result's share: the same for its writer and for whoever
    repairs it (a stored result keeps its writer's token)."""
    return _batch_token([final])


def announce(
    pipe: Pipeline, scripts: Scripts, settings: Settings, finals: Sequence[FinalResult], token: str
) -> Announcement:
    """Step 2: queue the replies (one XADD_MANY per reply stream), the TASK_COMPLETED events
    (one XADD_MANY) and inbox shares of recorded results, each once per sent marker (their
    dead letters go first: `_queue_dead_letters`)."""
    done = Announcement()
    if not finals:
        return done
    keys = settings.keys
    replies: dict[str, list[tuple[FinalResult, Mapping[Any, Any]]]] = {}
    events: list[tuple[FinalResult, Mapping[Any, Any]]] = []
    now = time.time()
    for final in finals:
        res = final.result
        shared, event = encode_result(res, final.dump, from_pool=res.pool_id)
        if final.reply_to:
            replies.setdefault(final.reply_to, []).append((final, shared))
        events.append((final, event))
        for target in final.share_with:
            inbox = keys.pool_inbox(target)
            marker = keys.sent_marker(inbox, _share_token(final))
            done.markers.append(marker)
            share = scripts.queue(
                pipe,
                scripts.send_to_inbox,
                [keys.pool(target), inbox, marker],
                [SENT_MARKER_TTL, *flat_fields(shared)],
            )
            done.shares.append((share, final, target))
        if final.submitted_at is None or now - final.submitted_at > settings.result_ttl / 2:
            # the `task` hash got its TTL at submission: keep it as long as the result
            pipe.expire(keys.task(res.task_id), settings.result_ttl)
    for client_id, entries in replies.items():
        stream = keys.replies(client_id)
        done.markers.append(
            _queue_entries(pipe, scripts, settings, stream, entries, token, ttl=settings.reply_ttl)
        )
    done.markers.append(
        _queue_entries(
            pipe, scripts, settings, keys.events, events, token, maxlen=settings.events_max_len
        )
    )
    return done


def _queue_dead_letters(
    pipe: Pipeline, scripts: Scripts, settings: Settings, dead: Sequence[FinalResult], token: str
) -> str:
    """Queue the dead letters of dead-lettered results (once per sent marker); the marker."""
    entries = [(final, _final_dead_letter(final)) for final in dead]
    return _queue_entries(
        pipe, scripts, settings, settings.keys.dlq, entries, token, maxlen=settings.dlq_max_len
    )


def _queue_entries(
    pipe: Pipeline,
    scripts: Scripts,
    settings: Settings,
    stream: str,
    entries: Sequence[tuple[FinalResult, Mapping[Any, Any]]],
    token: str,
    *,
    maxlen: int | None = None,
    ttl: int | None = None,
) -> str:
    """Queue one XADD_MANY of `entries` on `stream`; return its sent marker.

    A stored result announced by someone other than its writer names its writer's marker on
    this stream: if that exists, the writer added its entry before dying, and it is skipped.
    """
    keys = settings.keys
    marker = keys.sent_marker(stream, token)
    script_keys = [stream, marker]
    origin_at: dict[str, int] = {}
    args: list[Any] = [
        "" if maxlen is None else maxlen,
        "" if ttl is None else ttl,
        SENT_MARKER_TTL,
        len(entries),
    ]
    for final, entry in entries:
        origin = final.announced_as
        at = 0
        if origin and origin != token:
            at = origin_at.get(origin, 0)
            if not at:
                script_keys.append(keys.sent_marker(stream, origin))
                at = origin_at[origin] = len(script_keys)
        args.append(packed_task(at, {}, entry))
    scripts.queue(pipe, scripts.xadd_many, script_keys, args)
    return marker


Share = tuple[Queued[object], FinalResult, str]
"""A share queued by `announce`: its SEND_TO_INBOX call, the result, the target pool."""


async def _report_share_failures(
    redis: Redis, settings: Settings, shares: Sequence[Share], replies: Sequence[Any]
) -> bool:
    """Dead-letter (loudly) the shares an inbox refused, and say whether there were any; raise
    any other error of step 2."""
    share_at = {share.index: (final, target) for share, final, target in shares}
    pipe = redis.pipeline(transaction=False)
    for position, reply in enumerate(replies):
        if not isinstance(reply, Exception):
            continue
        if position not in share_at:
            raise reply
        final, target = share_at[position]
        reason = f"result not shared with pool {target}: {inbox_error(target, reply)}"
        log.warning("%s: %s", final.result.task_id, reason)
        queue_dead_letter(
            pipe,
            settings,
            dead_letter_record(
                task_id=final.result.task_id, pool_id=final.result.pool_id, reason=reason
            ),
        )
    if not len(pipe):
        return False
    await pipe.execute()
    return True


async def acknowledge(
    redis: Redis,
    scripts: Scripts,
    settings: Settings,
    announced: Sequence[tuple[str, str]],
    ack: Ack | None,
    markers: Sequence[str] = (),
) -> None:
    """Step 3: mark (home, task id) results announced and acknowledge `ack`'s entries, with one
    ACK_ANNOUNCED per slot; then the sent markers of step 2 can go."""
    pipe = redis.pipeline(transaction=False)
    _queue_acks(pipe, scripts, settings, announced, ack)
    for marker in markers:
        pipe.expire(marker, SENT_MARKER_GRACE)
    if len(pipe):
        await scripts.execute(pipe)


def _queue_acks(
    pipe: Pipeline,
    scripts: Scripts,
    settings: Settings,
    announced: Sequence[tuple[str, str]],
    ack: Ack | None,
) -> None:
    """Queue step 3's ACK_ANNOUNCED calls: one per slot of the states, the entries' stream
    riding with its own slot's."""
    keys = settings.keys
    by_home: dict[str, list[str]] = {}
    for home, task_id in announced:
        by_home.setdefault(home, []).append(keys.task_state(task_id, home))
    stream_slot = hash_tag(ack[0]) if ack and ack[2] else None
    for state_keys in by_home.values():
        if stream_slot is not None and hash_tag(state_keys[0]) == stream_slot and ack:
            stream, group, ids = ack
            args: list[Any] = ["1", group, len(ids), *ids]
            scripts.queue(pipe, scripts.ack_announced, [stream, *state_keys], args)
            stream_slot = None
        else:
            scripts.queue(pipe, scripts.ack_announced, state_keys, ["0", "", 0])
    if stream_slot is not None and ack is not None:
        stream, group, ids = ack
        scripts.queue(pipe, scripts.ack_announced, [stream], ["1", group, len(ids), *ids])


async def announce_stored(
    redis: Redis,
    scripts: Scripts,
    settings: Settings,
    tasks: Sequence[tuple[str, str]],
    *,
    ack: Ack | None = None,
) -> None:
    """Announce the stored results of final tasks whose writer never did (home, task id), then
    acknowledge `ack`'s entries."""
    await finalize_results(redis, scripts, settings, [], ack=ack, stored=tasks)


def dead_letter_record(
    *,
    task_id: str,
    pool_id: str | None,
    reason: str,
    attempts: int = 0,
    raw: Mapping[Any, Any] | None = None,
    history: list[str] | None = None,
    spec: TaskSpec | None = None,
) -> Fields:
    """One dead-letter record: the task, its pool, why, and the raw entry if unreadable."""
    record: Fields = {
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
) -> Fields:
    """The dead-letter record of a stream entry that could not be used, with its raw fields."""
    return dead_letter_record(
        task_id=text(fields.get(b"task")),
        pool_id=pool_id,
        reason=f"malformed entry {text(entry_id)} on {stream}: {reason}",
        raw=fields,
    )


def queue_dead_letter(pipe: Pipeline, settings: Settings, record: Fields) -> None:
    """Queue a dead-letter record (`dead_letter_record`) on the bounded dead-letter stream."""
    pipe.xadd(settings.keys.dlq, record, maxlen=settings.dlq_max_len, approximate=True)


def memory_record(settings: Settings, final: FinalResult, *, pool_id: str) -> dict[str, str]:
    """The memory record of a result: what was asked and a bounded output."""
    res = final.result
    output = output_json(res.output)
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


def queue_memory_record(
    pipe: Pipeline, settings: Settings, final: FinalResult, *, pool_id: str
) -> None:
    """Queue the memory record of a result on a pool's memory stream (a shared result filed
    by the pool's worker; a pool's own results get theirs in COMPLETE_BATCH)."""
    record: Fields = {k: v for k, v in memory_record(settings, final, pool_id=pool_id).items()}
    pipe.xadd(
        settings.keys.pool_memory(pool_id),
        record,
        maxlen=settings.memory_max_len,
        approximate=True,
    )
