"""Stream entries and their encoding: the seven message types plus control commands.

An entry keeps its routing headers as plain fields (`type`, `v`, `task`, `pool`, `attempt`) so
`redis-cli XRANGE` is readable, and carries its body as one msgpack field. Decoding never
executes anything (msgpack, never pickle) and turns every kind of garbage into
`MalformedMessage`, which the reader dead-letters with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, Literal, TypeAlias, TypeVar, cast, get_args

import msgpack
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.connection import Fields
from shared.errors import MalformedMessage
from shared.models import PoolSpec, PoolStatus, TaskResult, TaskSpec, TaskStatus

SCHEMA_VERSION = 1
MAX_BODY_BYTES = 8 * 1024 * 1024

StreamFields: TypeAlias = Fields
"""An entry's fields as XADD takes them (redis-py's exact argument type)."""
_K = TypeVar("_K", bound=bytes | str)
_V = TypeVar("_V", bound=bytes | str)


class MessageType(StrEnum):
    """The seven message types (docs/architecture.md), plus CONTROL for the control stream."""

    TASK_DELEGATE = "TASK_DELEGATE"
    RESULT_SHARE = "RESULT_SHARE"
    TASK_COMPLETED = "TASK_COMPLETED"
    STATUS_UPDATE = "STATUS_UPDATE"
    HEARTBEAT = "HEARTBEAT"
    POOL_CREATED = "POOL_CREATED"
    POOL_CLOSED = "POOL_CLOSED"
    CONTROL = "CONTROL"


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    type: MessageType


class TaskDelegate(_Message):
    """A task handed to a pool (or to the orchestrators, on the ingress stream)."""

    type: Literal[MessageType.TASK_DELEGATE] = MessageType.TASK_DELEGATE
    task: TaskSpec
    attempt: int = Field(default=1, ge=1)
    from_pool: str | None = None
    history: list[str] = Field(default_factory=list, max_length=100)


class ResultShare(_Message):
    """A result sent to the waiting client's reply stream or to another pool's inbox."""

    type: Literal[MessageType.RESULT_SHARE] = MessageType.RESULT_SHARE
    result: TaskResult
    from_pool: str | None = None


class TaskCompleted(_Message):
    """Broadcast when a task reaches a final status."""

    type: Literal[MessageType.TASK_COMPLETED] = MessageType.TASK_COMPLETED
    task_id: str
    pool_id: str | None
    worker_id: str | None
    status: TaskStatus
    duration: float = 0.0


class StatusUpdate(_Message):
    """A pool's status changed (`status`), or one of its workers' (`worker_id`, `worker_status`)."""

    type: Literal[MessageType.STATUS_UPDATE] = MessageType.STATUS_UPDATE
    pool_id: str
    status: PoolStatus | None = None
    detail: str = ""
    worker_id: str | None = None
    worker_status: str = ""


class Heartbeat(_Message):
    """Low-rate liveness broadcast of a worker (its hash with a TTL is the real signal)."""

    type: Literal[MessageType.HEARTBEAT] = MessageType.HEARTBEAT
    worker_id: str
    pool_id: str
    in_flight: int = 0


class PoolCreated(_Message):
    """A pool was created by an orchestrator."""

    type: Literal[MessageType.POOL_CREATED] = MessageType.POOL_CREATED
    spec: PoolSpec


class PoolClosed(_Message):
    """A pool was closed."""

    type: Literal[MessageType.POOL_CLOSED] = MessageType.POOL_CLOSED
    pool_id: str
    reason: str = ""


class ControlAction(StrEnum):
    """What a control command asks the orchestrators to do."""

    SPAWN = "spawn"
    SCALE = "scale"
    CLOSE = "close"


class Control(_Message):
    """A command on the control stream."""

    type: Literal[MessageType.CONTROL] = MessageType.CONTROL
    action: ControlAction
    pool_id: str
    spec: PoolSpec | None = None
    workers: int | None = Field(default=None, ge=0, le=1000)


Message = (
    TaskDelegate
    | ResultShare
    | TaskCompleted
    | StatusUpdate
    | Heartbeat
    | PoolCreated
    | PoolClosed
    | Control
)
_MODELS: dict[str, type[_Message]] = {
    str(model.model_fields["type"].default): model for model in get_args(Message)
}
"""The model of each message type: `decode` validates the one the entry's type names."""


def pack(value: Any) -> bytes:
    """Encode a JSON-like value with msgpack."""
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes) -> Any:
    """Decode msgpack bytes; raise MalformedMessage on garbage or an oversized body."""
    if len(data) > MAX_BODY_BYTES:
        raise MalformedMessage(f"body of {len(data)} bytes exceeds the {MAX_BODY_BYTES} limit")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise MalformedMessage(f"body is not valid msgpack: {exc}") from None


def encode(message: _Message) -> StreamFields:
    """The stream fields of a message: readable headers plus a msgpack body."""
    if isinstance(message, TaskDelegate):
        return encode_task(
            message.task,
            attempt=message.attempt,
            from_pool=message.from_pool,
            history=message.history,
        )
    # default values are left out (the reader fills them in): a small task's body is ~80 bytes
    body = message.model_dump(mode="json", exclude={"type"}, exclude_defaults=True)
    fields: StreamFields = {"type": str(message.type), "v": SCHEMA_VERSION}
    if isinstance(message, ResultShare):
        fields["task"] = message.result.task_id
        fields["status"] = str(message.result.status)
    elif isinstance(message, TaskCompleted):
        fields["task"] = message.task_id
        fields["status"] = str(message.status)
    elif isinstance(message, StatusUpdate | PoolClosed | Control | Heartbeat):
        fields["pool"] = message.pool_id
    elif isinstance(message, PoolCreated):
        fields["pool"] = message.spec.id
    fields["body"] = _checked(pack(body))
    return fields


def encode_task(
    task: TaskSpec,
    *,
    attempt: int = 1,
    from_pool: str | None = None,
    history: Sequence[str] = (),
) -> StreamFields:
    """The TASK_DELEGATE entry of a task: what `encode(TaskDelegate(task=task, ...))` writes,
    without building and dumping the message around the task (the client queues thousands of
    tasks at once). The task's defaults are left out, and so are the message's (its attempt 1,
    no from_pool, an empty history)."""
    body: dict[str, Any] = {"task": task.model_dump(mode="json", exclude_defaults=True)}
    if attempt != 1:
        body["attempt"] = attempt
    if from_pool is not None:
        body["from_pool"] = from_pool
    if history:
        body["history"] = list(history)
    return {
        "type": MessageType.TASK_DELEGATE.value,
        "v": SCHEMA_VERSION,
        "task": task.id,
        "pool": task.pool_id or "",
        "attempt": attempt,
        "body": _checked(pack(body)),
    }


def encode_result(
    result: TaskResult, dump: dict[str, Any], *, from_pool: str | None
) -> tuple[StreamFields, StreamFields]:
    """The RESULT_SHARE and TASK_COMPLETED entries of a final result, from its dump
    (`result.model_dump(mode="json", exclude_defaults=True)`, which the caller also stores).

    The same fields as `encode(ResultShare(...))` and `encode(TaskCompleted(...))`
    (tests/test_codec.py checks it), without building and dumping two more models per result.
    """
    share_body: dict[str, Any] = {"result": dump}
    if from_pool is not None:
        share_body["from_pool"] = from_pool
    status = str(result.status)
    event_body: dict[str, Any] = {
        "task_id": result.task_id,
        "pool_id": result.pool_id,
        "worker_id": result.worker_id,
        "status": status,
    }
    if result.duration != 0.0:
        event_body["duration"] = result.duration
    share = _result_headers(MessageType.RESULT_SHARE, result.task_id, status)
    event = _result_headers(MessageType.TASK_COMPLETED, result.task_id, status)
    share["body"] = _checked(pack(share_body))
    event["body"] = pack(event_body)
    return share, event


def _result_headers(kind: MessageType, task_id: str, status: str) -> StreamFields:
    return {"type": str(kind), "v": SCHEMA_VERSION, "task": task_id, "status": status}


def _checked(data: bytes) -> bytes:
    if len(data) > MAX_BODY_BYTES:
        raise MalformedMessage(f"body of {len(data)} bytes exceeds the {MAX_BODY_BYTES} limit")
    return data


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def decode(fields: Mapping[_K, _V]) -> Message:
    """Decode stream fields into a message; raise MalformedMessage naming what is wrong."""
    kind_text, body_raw = _usual_headers(fields) or _headers(fields)
    body = unpack(body_raw if isinstance(body_raw, bytes) else body_raw.encode())
    if not isinstance(body, dict):
        raise MalformedMessage(f"{kind_text} body is a {type(body).__name__}, not a map")
    try:
        body["type"] = kind_text
        return cast(Message, _MODELS[kind_text].model_validate(body))
    except ValidationError as exc:
        raise MalformedMessage(f"{kind_text} body is invalid: {_first_error(exc)}") from None


_KIND_OF: dict[bytes, str] = {kind.encode(): kind for kind in MessageType.__members__}
_READABLE_VERSIONS = (None, *(str(v).encode() for v in range(1, SCHEMA_VERSION + 1)))


def _usual_headers(fields: Mapping[Any, Any]) -> tuple[str, bytes] | None:
    """(type, body) of an entry as Redis returns ours: bytes keys and values, a known type, a
    readable version. None for anything else, which `_headers` reads (and explains)."""
    kind = fields.get(b"type")
    body = fields.get(b"body")
    if type(kind) is not bytes or type(body) is not bytes:
        return None
    if fields.get(b"v") not in _READABLE_VERSIONS:
        return None
    kind_text = _KIND_OF.get(kind)
    return None if kind_text is None else (kind_text, body)


def _headers(fields: Mapping[_K, _V]) -> tuple[str, bytes | str]:
    """(type, body) of any entry; MalformedMessage if its headers are wrong."""
    headers = {_text(k): v for k, v in fields.items()}
    kind = headers.get("type")
    if kind is None:
        raise MalformedMessage("entry has no 'type' field")
    kind_text = _text(kind)
    if kind_text not in MessageType.__members__:
        raise MalformedMessage(f"unknown message type {kind_text[:60]!r}")
    version = _text(headers.get("v", b"1"))
    if not version.isdigit():
        raise MalformedMessage(f"schema version {version[:20]!r} is not a number")
    if int(version) > SCHEMA_VERSION:
        raise MalformedMessage(
            f"{kind_text} entry was written by a newer version (schema v{version}; "
            f"this process reads up to v{SCHEMA_VERSION}): upgrade it"
        )
    body_raw = headers.get("body")
    if body_raw is None:
        raise MalformedMessage(f"{kind_text} entry has no 'body' field")
    return kind_text, body_raw


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return str(exc)
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the field and the bad value."""
    lines = []
    for err in exc.errors():
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        where = ".".join(str(p) for p in err.get("loc", ()))
        if not where:  # a rule over several fields: its message names them
            lines.append(message)
            continue
        shown = repr(err.get("input"))
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"{where}={shown}: {message}")
    return "; ".join(lines)
