"""Idempotency keys: a re-submitted request gets the task first submitted under its key.

Two submissions are the same request when they ask for the same work in the same place: the
same payload (`prompt`, or `call` with its `args` and `kwargs`, or `command`), the same target
`pool_id` (None for routed tasks) and the same required `labels`. Options that only change how
the work is scheduled, bounded, retried or reported (`timeout`, `queue_timeout`,
`max_attempts`, `strategy`, `affinity_key`, `tags`, `share_with`) and what differs between any
two submissions (`id`, `submitted_at`, `reply_to`) are not compared: a re-submit that differs
only in them gets the first task, whose options stand. A different request under a used key is
refused with IdempotencyConflict.

The key (`keys.idempotency(K)`, a string with the result TTL) holds "<task id> <digest>", the
digest being a hash of the compared fields; a value holding only a task id (written before
digests were kept) matches any request.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from shared.connection import Redis
from shared.errors import IdempotencyConflict
from shared.keys import Keys
from shared.models import TaskSpec
from shared.replies import queued, text

COMPARED_FIELDS = frozenset({"prompt", "command", "call", "args", "kwargs", "pool_id", "labels"})


def request_digest(spec: TaskSpec) -> str:
    """A stable digest of what a task asks for and where (the fields in COMPARED_FIELDS)."""
    data = spec.model_dump(mode="json", include=set(COMPARED_FIELDS))
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def _conflict(key: str, task_id: str) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"idempotency_key={key!r} already names task {task_id}, which asked for something "
        "else (its payload, pool or labels differ); send the same request to get that task, "
        "or use a new key",
        key,
        task_id,
    )


async def claim_keys(
    redis: Redis, keys: Keys, specs: Sequence[TaskSpec], ttl: int
) -> dict[str, str]:
    """Reserve the idempotency keys of `specs`; return {key: id of the task it names}.

    A spec is to be queued when it has no key, or its key names it. Raises IdempotencyConflict
    (and reserves nothing) when a key already names, or is given earlier in `specs` to, a
    different request.
    """
    first: dict[str, TaskSpec] = {}
    digests: dict[str, str] = {}
    for spec in specs:
        if spec.idempotency_key:
            first.setdefault(spec.idempotency_key, spec)
            digests[spec.id] = request_digest(spec)
    if not first:
        return {}
    pipe = redis.pipeline(transaction=False)
    reads = []
    for key, spec in first.items():
        # SET NX then GET, not SET NX GET: that form needs Redis 7, and 6.2 must keep working
        claim = f"{spec.id} {digests[spec.id]}"
        was_set = queued(pipe, pipe.set(keys.idempotency(key), claim, nx=True, ex=ttl))
        current = queued(pipe, pipe.get(keys.idempotency(key)))
        reads.append((key, spec, was_set, current))
    replies = await pipe.execute()
    owner: dict[str, tuple[str, str | None]] = {}  # key -> (task id, its digest if known)
    won: list[str] = []  # keys this call set (the others were there before)
    for key, spec, was_set, current in reads:
        stored = None if was_set.reply(replies) else current.reply(replies)
        stored_id, _, stored_digest = text(stored).partition(" ")
        if stored is None:
            won.append(key)
        if stored is None or stored_id == spec.id:
            owner[key] = (spec.id, digests[spec.id])
        else:
            owner[key] = (stored_id, stored_digest or None)
    for spec in specs:
        given = spec.idempotency_key
        if not given:
            continue
        first_id, first_digest = owner[given]
        if first_digest is not None and first_digest != digests[spec.id]:
            undo = redis.pipeline(transaction=False)
            for taken in won:  # one key per command: the keys may be on different slots
                undo.delete(keys.idempotency(taken))
            await undo.execute()
            raise _conflict(given, first_id)
    return {key: task_id for key, (task_id, _) in owner.items()}
