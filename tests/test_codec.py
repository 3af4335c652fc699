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
    Control,
    ControlAction,
    MessageType,
    ResultShare,
    TaskCompleted,
    TaskDelegate,
    decode,
    encode,
    encode_result,
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
