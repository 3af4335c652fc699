"""Helpers of the MCP facade: argument parsing, error messages, and the dead-letter stream.

Errors the system raises on purpose become `ToolError`s whose text the model reads: which
argument was wrong and why, which pool or task is unknown, that a queue is full, that no
orchestrator answered, that Redis cannot be reached. Anything else is a bug and stays hidden
behind the SDK's generic message (and is logged with its traceback).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError
from pydantic import ValidationError
from redis.exceptions import RedisError

from shared.client import PoolManager
from shared.codec import Message, TaskDelegate, decode, describe_validation_error, unpack
from shared.config import Settings
from shared.connection import Redis, decode_hash, text
from shared.errors import (
    BrokerError,
    ExecutorError,
    InvalidRequest,
    MahavishnuError,
    MalformedMessage,
    OrchestratorUnavailable,
    PoolNotFound,
    PoolUnavailable,
    QueueFull,
    ResultTimeout,
    TaskNotFound,
)
from shared.models import RoutingStrategy, TaskSpec, new_id

ENTRY_ID_RE = re.compile(r"^\d{1,20}-\d{1,20}$")
_PAGE = 500


@contextmanager
def tool_errors(settings: Settings) -> Iterator[None]:
    """Turn the system's deliberate errors into ToolErrors with a message for the model."""
    try:
        yield
    except ToolError:
        raise
    except ValidationError as exc:
        raise ToolError(f"invalid argument: {describe_validation_error(exc)}") from None
    except InvalidRequest as exc:
        raise ToolError(f"invalid argument: {exc}") from None
    except PoolNotFound as exc:
        raise ToolError(f"unknown pool: {exc}; pool_list shows the live pools") from None
    except TaskNotFound as exc:
        raise ToolError(f"unknown task: {exc}") from None
    except QueueFull as exc:
        raise ToolError(f"{exc}; nothing was queued") from None
    except PoolUnavailable as exc:
        raise ToolError(f"pool unavailable: {exc}") from None
    except OrchestratorUnavailable as exc:
        raise ToolError(f"no orchestrator: {exc}") from None
    except ResultTimeout as exc:
        raise ToolError(
            f"timed out: {exc}; poll task_result with task_id={exc.task_id!r}"
        ) from None
    except ExecutorError as exc:
        raise ToolError(f"executor error: {exc}") from None
    except BrokerError as exc:
        raise ToolError(str(exc)) from None
    except (RedisError, OSError) as exc:
        raise ToolError(
            f"Redis at {settings.redis_url_redacted} is not reachable or failed: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    except MahavishnuError as exc:
        raise ToolError(str(exc)) from None


def parse_labels(labels: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """Labels as a mapping, or as a list of `key=value` strings."""
    if labels is None:
        return {}
    if isinstance(labels, Mapping):
        return {str(k): str(v) for k, v in labels.items()}
    parsed: dict[str, str] = {}
    for item in labels:
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise InvalidRequest(f"labels: {item!r} is not 'key=value'")
        parsed[key.strip()] = value.strip()
    return parsed


def parse_selector(value: str | None) -> RoutingStrategy | None:
    """A routing strategy by name (case and '-'/'_' do not matter); None keeps the default."""
    if value is None or not value.strip():
        return None
    name = value.strip().lower().replace("-", "_")
    try:
        return RoutingStrategy(name)
    except ValueError:
        choices = ", ".join(s.value for s in RoutingStrategy)
        raise InvalidRequest(f"pool_selector={value!r}: choose one of {choices}") from None


def task_payload(
    *,
    prompt: str | None,
    command: list[str] | None,
    call: str | None,
    args: list[Any] | None,
    kwargs: dict[str, Any] | None,
    **fields: Any,
) -> dict[str, Any]:
    """A task mapping from tool arguments (None means: not given), validated later by TaskSpec."""
    given = [
        n for n, v in (("prompt", prompt), ("command", command), ("call", call)) if v is not None
    ]
    if len(given) != 1:
        got = f"got {' and '.join(given)}" if given else "got none"
        raise InvalidRequest(
            f"prompt/command/call: give exactly one of them ({got}): prompt for AI CLI and "
            "python pools, command for shell pools, call for a python pool's function"
        )
    if (args or kwargs) and call is None:
        raise InvalidRequest("args/kwargs: only a 'call' task takes arguments; set call too")
    data: dict[str, Any] = {"prompt": prompt, "command": command, "call": call}
    if args:
        data["args"] = args
    if kwargs:
        data["kwargs"] = kwargs
    data.update(fields)
    return {k: v for k, v in data.items() if v is not None}


# ------------------------------------------------------------------ dead letters


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
    "this dead letter records only the task id, pool and reason; the task's spec is not kept "
    "once a task is dead-lettered, so it cannot be re-submitted from here: submit the task again "
    "(task_status shows its last error)"
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
        page = await redis.xrevrange(key, max=upper, min="-", count=_PAGE)
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
    found = await redis.xrange(settings.keys.dlq, min=entry_id, max=entry_id)
    if not found:
        raise InvalidRequest(
            f"entry_id={entry_id!r}: no such dead letter (already requeued, trimmed, or never "
            "existed)"
        )
    return parse_dead_letter(entry_id, found[0][1])


async def requeue_dead_letter(
    pools: PoolManager, entry_id: str, *, pool_id: str | None = None
) -> tuple[DeadLetter, str]:
    """Re-submit a dead letter's task as a new task and delete the entry; return the new id.

    The new task goes to `pool_id` if given, else where the original was sent (its pool, or the
    orchestrators for a routed task). Concurrent requeues of one entry submit one task (an
    idempotency key per entry). InvalidRequest explains a dead letter that cannot be requeued.
    """
    letter = await read_dead_letter(pools.redis, pools.settings, entry_id)
    if letter.message is None:
        raise InvalidRequest(f"dead letter {entry_id} cannot be requeued: {letter.problem}")
    original = letter.message.task
    task = original.model_copy(
        update={
            "id": new_id("t"),
            "submitted_at": time.time(),
            "idempotency_key": f"dlq-requeue:{entry_id}",
            "reply_to": None,
        }
    )
    target = pool_id or original.pool_id
    new_id_ = await pools.submit(task, pool_id=target, expect_reply=False)
    await pools.redis.xdel(pools.keys.dlq, entry_id)
    return letter, new_id_
