"""The dead-letter stream: reading its entries, and the task each one can re-submit.

A dead letter records the task id, its pool, the reason and the attempt history; it also keeps
the task's spec (`spec`, JSON) when the task ran out of attempts, or the raw stream entry
(`raw`, msgpack) when an entry could not be decoded, so it can be requeued.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from shared.codec import Message, TaskDelegate, decode, describe_validation_error, unpack
from shared.config import Settings
from shared.connection import Redis
from shared.errors import InvalidRequest, MalformedMessage
from shared.models import TaskSpec
from shared.replies import decode_hash, stream_entries, text

ENTRY_ID_RE = re.compile(r"^\d{1,20}-\d{1,20}$")
_PAGE = 500


@dataclass
class DeadLetter:
    """One entry of the dead-letter stream, with the task it can re-submit (if any)."""

    entry_id: str
    task_id: str
    pool_id: str
    reason: str
    attempts: int
    at: float
    message: TaskDelegate | None = None
    problem: str = ""
    history: list[str] = field(default_factory=list)


NO_SPEC = (
    "this dead letter records only the task id, pool and reason (it holds no task spec), so it "
    "cannot be re-submitted from here: submit the task again (task_status shows its last error)"
)


def _entry_fields(raw: Any) -> dict[str, bytes | str]:
    """Stream fields from a packed `raw` map, with every value as bytes or str."""
    data = unpack(raw if isinstance(raw, bytes) else str(raw).encode())
    if not isinstance(data, dict):
        raise MalformedMessage(f"raw entry is a {type(data).__name__}, not a map")
    return {
        str(k): v if isinstance(v, bytes | str) else str(v)
        for k, v in data.items()  # an int `v` header would not decode otherwise
    }


def parse_dead_letter(entry_id: str, fields: dict[bytes, bytes]) -> DeadLetter:
    """A DeadLetter from its stream fields; its task comes from `spec` (the task's JSON) or
    from `raw` (the packed stream entry a malformed message was dead-lettered with)."""
    plain = decode_hash({k: v for k, v in fields.items() if k not in (b"raw", b"spec")})
    try:
        attempts = int(plain.get("attempts", "0") or 0)
        at = float(plain.get("at", "0") or 0)
    except ValueError:
        attempts, at = 0, 0.0
    letter = DeadLetter(
        entry_id=entry_id,
        task_id=plain.get("task", ""),
        pool_id=plain.get("pool", ""),
        reason=plain.get("reason", ""),
        attempts=attempts,
        at=at,
        history=_history(plain.get("history", "")),
    )
    try:
        if b"spec" in fields:
            msg: Message = TaskDelegate(task=TaskSpec.model_validate_json(fields[b"spec"]))
        elif b"raw" in fields:
            msg = decode(_entry_fields(fields[b"raw"]))
        else:
            letter.problem = NO_SPEC
            return letter
    except ValidationError as exc:
        letter.problem = f"the stored task spec is invalid ({describe_validation_error(exc)})"
        return letter
    except MalformedMessage as exc:
        letter.problem = f"the original entry cannot be decoded ({exc}), so it cannot be requeued"
        return letter
    if not isinstance(msg, TaskDelegate):
        letter.problem = f"the original entry is a {msg.type} message, not a task"
        return letter
    letter.message = msg
    letter.task_id = letter.task_id or msg.task.id
    letter.history = letter.history or list(msg.history)
    return letter


def _history(value: str) -> list[str]:
    """The `history` field of a dead letter (a JSON list of lines), or [] if absent or unusable."""
    if not value:
        return []
    try:
        lines = json.loads(value)
    except ValueError:
        return [value]
    return [str(line) for line in lines] if isinstance(lines, list) else [str(lines)]


async def list_dead_letters(
    redis: Redis, settings: Settings, *, limit: int, pool_id: str | None = None
) -> tuple[int, list[DeadLetter]]:
    """The stream's length and its newest `limit` entries (of one pool, if given)."""
    key = settings.keys.dlq
    total = int(await redis.xlen(key))
    found: list[DeadLetter] = []
    upper = "+"
    scanned = 0
    while len(found) < limit and scanned < max(10_000, limit):
        page = stream_entries(await redis.xrevrange(key, max=upper, min="-", count=_PAGE))
        if not page:
            break
        scanned += len(page)
        for entry_id, fields in page:
            letter = parse_dead_letter(text(entry_id), fields)
            if pool_id is None or letter.pool_id == pool_id:
                found.append(letter)
                if len(found) >= limit:
                    break
        if len(page) < _PAGE:
            break
        upper = "(" + text(page[-1][0])
    return total, found


async def read_dead_letter(redis: Redis, settings: Settings, entry_id: str) -> DeadLetter:
    """One dead letter by its entry id; InvalidRequest for a bad id or a missing entry."""
    if not ENTRY_ID_RE.match(entry_id):
        raise InvalidRequest(
            f"entry_id={entry_id!r}: not a stream entry id (like '1712345678901-0'); "
            "pool_dead_letters with action='list' shows them"
        )
    found = stream_entries(await redis.xrange(settings.keys.dlq, min=entry_id, max=entry_id))
    if not found:
        raise InvalidRequest(
            f"entry_id={entry_id!r}: no such dead letter (already requeued, trimmed, or never "
            "existed)"
        )
    return parse_dead_letter(entry_id, found[0][1])
