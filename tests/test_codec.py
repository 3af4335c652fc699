"""Stream entries: readable headers, msgpack bodies, garbage turned into MalformedMessage."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.codec import (
    _MODELS,
    MAX_BODY_BYTES,
    SCHEMA_VERSION,
    Control,
    ControlAction,
    MessageType,
    ResultShare,
    TaskCompleted,
    TaskDelegate,
    _usual_headers,
    decode,
    encode,
    encode_result,
    encode_task,
    pack,
    unpack,
)
from shared.errors import MalformedMessage
from shared.models import PoolSpec, TaskResult, TaskSpec, TaskStatus

pytestmark = pytest.mark.unit  # needs no Redis: `make test-unit`


def as_redis(fields: dict[str, Any]) -> dict[bytes, bytes]:
    """Fields as Redis returns them: bytes keys and values."""
    return {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}


def test_a_task_round_trips_with_readable_headers() -> None:
    task = TaskSpec(prompt="write tests", labels={"gpu": "true"}, tags=["a"])
    fields = encode(TaskDelegate(task=task, attempt=2))
    assert fields["type"] == "TASK_DELEGATE"
    assert fields["task"] == task.id
    assert fields["attempt"] == 2
    back = decode(as_redis(fields))
    assert isinstance(back, TaskDelegate)
    assert back.task == task
    assert back.attempt == 2


def test_every_message_type_has_its_model() -> None:
    assert set(_MODELS) == {str(kind) for kind in MessageType}


def test_every_message_type_round_trips() -> None:
    result = TaskResult(task_id="t-1", status=TaskStatus.COMPLETED, output={"x": [1, 2]})
    control = Control(action=ControlAction.SPAWN, pool_id="p1", spec=PoolSpec(id="p1", name="n"))
    for message in (ResultShare(result=result), control):
        assert decode(as_redis(encode(message))) == message


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, "no 'type' field"),
        ({b"type": b"EXPLODE", b"body": b"\x80"}, "unknown message type 'EXPLODE'"),
        ({b"type": b"TASK_DELEGATE"}, "no 'body' field"),
        ({b"type": b"TASK_DELEGATE", b"body": b"\xc1"}, "not valid msgpack"),
        ({b"type": b"TASK_DELEGATE", b"body": msgpack.packb([1])}, "is a list, not a map"),
        ({b"type": b"TASK_DELEGATE", b"body": msgpack.packb({"task": {}})}, "task: Value error"),
        ({b"type": b"TASK_DELEGATE", b"v": b"x", b"body": b"\x80"}, "version 'x'"),
        ({b"type": b"TASK_DELEGATE", b"v": b"9", b"body": b"\x80"}, "written by a newer version"),
    ],
)
def test_garbage_is_a_malformed_message_with_the_reason(
    fields: dict[bytes, bytes], reason: str
) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        decode(fields)


def test_an_oversized_body_is_refused() -> None:
    with pytest.raises(MalformedMessage, match="exceeds"):
        unpack(b"\x00" * (MAX_BODY_BYTES + 1))


def test_msgpack_never_builds_objects_from_ext_types() -> None:
    data = msgpack.packb(msgpack.ExtType(42, b"payload"))
    value = unpack(data)
    assert isinstance(value, msgpack.ExtType)


@given(st.binary(max_size=512))
def test_random_bytes_never_escape_as_other_errors(blob: bytes) -> None:
    for fields in ({b"type": b"TASK_DELEGATE", b"body": blob}, {b"type": blob, b"body": blob}):
        with contextlib.suppress(MalformedMessage):
            decode(fields)


def json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Lists and maps of `inner` (a def, not a lambda: hypothesis reads its source)."""
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    json_containers,
    max_leaves=12,
)


@given(json_values)
def test_pack_round_trips_json_like_values(value: Any) -> None:
    assert unpack(pack(value)) == value


@given(st.text(min_size=1, max_size=200), st.integers(1, 100))
def test_any_valid_task_round_trips(prompt: str, attempts: int) -> None:
    task = TaskSpec(prompt=prompt, max_attempts=attempts)
    back = decode(as_redis(encode(TaskDelegate(task=task))))
    assert isinstance(back, TaskDelegate) and back.task == task
    assert back.type is MessageType.TASK_DELEGATE


@given(
    st.sampled_from(list(TaskStatus)),
    st.none() | st.text(max_size=20),
    st.none() | st.sampled_from(["p1", "pool-2"]),
    st.floats(0, 1e6, allow_nan=False),
    st.none() | st.sampled_from(["p1", "elsewhere"]),
    st.none() | st.text(max_size=10),
)
def test_encode_result_writes_what_encode_writes(
    status: TaskStatus,
    output: str | None,
    pool_id: str | None,
    duration: float,
    from_pool: str | None,
    error: str | None,
) -> None:
    result = TaskResult(
        task_id="t-1",
        pool_id=pool_id,
        worker_id="w-1" if pool_id else None,
        status=status,
        output=output,
        error=error,
        duration=duration,
        attempts=2,
    )
    dump = result.model_dump(mode="json", exclude_defaults=True)
    share, event = encode_result(result, dump, from_pool=from_pool)
    assert share == encode(ResultShare(result=result, from_pool=from_pool))
    completed = TaskCompleted(
        task_id="t-1",
        pool_id=pool_id,
        worker_id=result.worker_id,
        status=status,
        duration=duration,
    )
    assert event == encode(completed)


@given(
    st.integers(1, 5),
    st.none() | st.sampled_from(["p1", "elsewhere"]),
    st.lists(st.text(max_size=10), max_size=3),
    st.none() | st.sampled_from(["p1", "p2"]),
    st.lists(st.sampled_from(["a", "b"]), max_size=2),
)
def test_a_task_entry_is_the_dump_of_its_message(
    attempt: int,
    from_pool: str | None,
    history: list[str],
    pool_id: str | None,
    tags: list[str],
) -> None:
    task = TaskSpec(call="noop", args=[1], pool_id=pool_id, tags=tags)
    message = TaskDelegate(task=task, attempt=attempt, from_pool=from_pool, history=history)
    dump = message.model_dump(mode="json", exclude={"type"}, exclude_defaults=True)
    fields = encode_task(task, attempt=attempt, from_pool=from_pool, history=history)
    assert fields == encode(message)
    assert fields == {
        "type": "TASK_DELEGATE",
        "v": SCHEMA_VERSION,
        "task": task.id,
        "pool": pool_id or "",
        "attempt": attempt,
        "body": pack(dump),
    }


def with_text_keys(fields: dict[bytes, bytes]) -> dict[str, bytes]:
    """The same entry with str keys: `decode` reads its headers the general way."""
    return {k.decode(): v for k, v in fields.items()}


def decoded(fields: Any) -> Any:
    """What `decode` makes of an entry: the message, or the MalformedMessage's reason."""
    try:
        return decode(fields)
    except MalformedMessage as exc:
        return str(exc)


header_values = st.sampled_from(
    [b"TASK_DELEGATE", b"RESULT_SHARE", b"HEARTBEAT", b"EXPLODE", b"", b"1", b"2", b"01", b"x"]
)


@given(
    st.dictionaries(st.sampled_from([b"type", b"v", b"body", b"task"]), header_values),
    st.sampled_from(
        [
            encode(TaskDelegate(task=TaskSpec(id="t-1", call="noop", submitted_at=1.0))),
            encode(ResultShare(result=TaskResult(task_id="t-1", status=TaskStatus.FAILED))),
        ]
    ),
    st.booleans(),
    st.data(),
)
def test_usual_entries_read_as_any_entry_reads(
    headers: dict[bytes, bytes], entry: dict[str, Any], keep_body: bool, data: st.DataObject
) -> None:
    """Entries as Redis returns them are read by a shortcut; it agrees with the general way
    on any headers and on bodies cut short or with a byte changed."""
    body = as_redis(entry)[b"body"]
    if keep_body:
        headers[b"body"] = body
    if b"body" in headers and data.draw(st.booleans()):
        at = data.draw(st.integers(0, len(body) - 1))
        cut = data.draw(st.booleans())
        headers[b"body"] = (
            body[:at] if cut else body[:at] + bytes([body[at] ^ 0x41]) + body[at + 1 :]
        )
    assert decoded(headers) == decoded(with_text_keys(headers))


def test_an_entry_from_redis_and_the_same_entry_with_text_keys_decode_alike() -> None:
    task = TaskSpec(prompt="hi", pool_id="p1")
    fields = as_redis(encode(TaskDelegate(task=task, attempt=3)))
    assert _usual_headers(fields) == ("TASK_DELEGATE", fields[b"body"])  # the shortcut is taken
    assert decode(fields) == decode(with_text_keys(fields)) == TaskDelegate(task=task, attempt=3)
    del fields[b"v"]  # entries written before the version header read as version 1
    assert decode(fields) == decode(with_text_keys(fields))
