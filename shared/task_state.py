"""Where a task's state lives, and reading it by task id.

A task's state (status, attempts, worker, result) lives in the slot of the pool it is queued
on, `Keys.pool_task(P, T)`, so a worker's scripts touch one slot. Its `Keys.task(T)` hash, in
the ingress slot, is the look-up by id: `home` names that pool; `cancel_requested` and
`routed_from` are kept there because they must outlive a move between pools; and while a
routed task waits in the ingress (no pool yet, `home` empty) that hash holds the whole state.
All look-ups share the ingress slot, so a batch of them is one script (`INIT_BATCH`,
`SUBMIT_BATCH` for the ingress, `CLAIM_ROUTE`).

    direct submit    {ingress}:task:T {home: P}     pool:{P}:task:T {status: queued, ...}
    routed submit    {ingress}:task:T {status: pending, ...}
    routed to P      {ingress}:task:T {home: P, routed_from: E, ...}
                                                    pool:{P}:task:T {status: queued, ...}
    routed retry     the state stays in P until the next route moves it (a new ingress entry)

`read_state` follows `home`, falling back to the `task` hash while a move is under way.

Readable with one `HGETALL` (docs/redis-keys.md): besides the Unix times the code reads
(`submitted_at`, `started_at`, `finished_at`) the state holds them in ISO 8601 UTC
(`submitted`, `started`, `finished`: `iso_time`), and a final result holds the first
`OUTPUT_HEAD_CHARS` characters of its output as text (`output`) and of its error (`error`)
beside the whole result in msgpack (`result`).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from typing import Any

from shared.connection import Redis
from shared.keys import Keys
from shared.models import TaskSpec, TaskStatus
from shared.replies import hash_reply, queued, text

RawHash = dict[bytes, bytes]

OUTPUT_HEAD_CHARS = 200
"""Characters of a result's output kept as plain text in its state (`output`)."""


_last_second: tuple[int, str] = (-1, "")


def iso_time(timestamp: float) -> str:
    """A Unix time as ISO 8601 UTC with milliseconds: 2026-01-31T12:00:00.123Z.

    Called for every task on the hot path: the text of the current second is kept, so a call
    costs a division and a format instead of a datetime (0.5 µs instead of 4).
    """
    global _last_second
    second = int(timestamp // 1)
    cached, text = _last_second
    if second != cached:
        text = datetime.datetime.fromtimestamp(second, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _last_second = (second, text)
    return f"{text}.{int((timestamp - second) * 1000):03d}Z"


# made once: `json.dumps(value, default=str)` builds an encoder per call (5 µs, on the hot path)
_JSON_TEXT = json.JSONEncoder(default=str, ensure_ascii=False)
_JSON_ASCII = json.JSONEncoder(default=str)


def output_head(output: Any) -> str:
    """The first OUTPUT_HEAD_CHARS characters of an output, as text ('' for none)."""
    if output is None:
        return ""
    if isinstance(output, str):
        return output[:OUTPUT_HEAD_CHARS]
    return _JSON_TEXT.encode(output)[:OUTPUT_HEAD_CHARS]


def output_json(output: Any) -> str:
    """An output as text: a string as it is, anything else as JSON (ASCII; unknown types as
    their str)."""
    return output if isinstance(output, str) else _JSON_ASCII.encode(output)


def task_state_fields(spec: TaskSpec, *, pool_id: str | None) -> dict[str, str]:
    """The state of a task being queued on `pool_id` (None: waiting in the ingress)."""
    state = {
        "status": str(TaskStatus.QUEUED if pool_id else TaskStatus.PENDING),
        "submitted_at": repr(spec.submitted_at),
        "submitted": iso_time(spec.submitted_at),
        "attempts": "0",
    }
    if pool_id:
        state["pool"] = pool_id
    if spec.reply_to:
        state["reply_to"] = spec.reply_to
    if spec.share_with:
        state["share_with"] = json.dumps(list(spec.share_with))
    return state


def home_of(lookup: Mapping[bytes, bytes]) -> str:
    """The pool holding the task's state, from its `task` hash ('' while it has none)."""
    return text(lookup.get(b"home"))


async def read_state(redis: Redis, keys: Keys, task_id: str) -> tuple[str, RawHash] | None:
    """(home, state hash) of a task, or None if its `task` hash is gone."""
    lookup = hash_reply(await redis.hgetall(keys.task(task_id)))
    if not lookup:
        return None
    home = home_of(lookup)
    if not home:
        return "", lookup
    state = hash_reply(await redis.hgetall(keys.pool_task(home, task_id)))
    # empty while the move into the pool is under way: the `task` hash still says `pending`
    return home, state or lookup


async def read_state_fields(
    redis: Redis, keys: Keys, task_ids: Sequence[str], fields: Sequence[str]
) -> list[list[str] | None]:
    """`fields` of each task's state (None for a task whose `task` hash is gone), in two round
    trips however many tasks."""
    if not task_ids:
        return []
    pipe = redis.pipeline(transaction=False)
    lookups = [queued(pipe, pipe.hmget(keys.task(t), ["home", *fields])) for t in task_ids]
    replies = await pipe.execute()
    out: list[list[str] | None] = []
    homed: list[tuple[int, str, str]] = []  # (position in `out`, task id, home)
    for position, (task_id, lookup) in enumerate(zip(task_ids, lookups, strict=True)):
        values = lookup.reply(replies)
        if values is None or all(v is None for v in values):
            out.append(None)
            continue
        home = text(values[0])
        out.append([text(v) for v in values[1:]])
        if home:
            homed.append((position, task_id, home))
    if homed:
        pipe = redis.pipeline(transaction=False)
        states = [
            (position, queued(pipe, pipe.hmget(keys.pool_task(home, task_id), list(fields))))
            for position, task_id, home in homed
        ]
        replies = await pipe.execute()
        for position, state in states:
            values = state.reply(replies)
            if values and any(v is not None for v in values):
                out[position] = [text(v) for v in values]
    return out


def share_targets(state: Mapping[bytes, bytes]) -> list[str]:
    """The pools a task's result is shared with, from its state hash."""
    raw = state.get(b"share_with")
    if not raw:
        return []
    try:
        value: Any = json.loads(raw)
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []
