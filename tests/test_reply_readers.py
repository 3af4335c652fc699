"""The typed reply readers of shared/connection.py and pipeline replies read by name, without
Redis: replies shaped as redis-py 8 parses them over RESP2 with `decode_responses=False`."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from shared.replies import (
    PendingEntry,
    as_bytes,
    decode_hash,
    flatten_read,
    hash_reply,
    pending_consumers,
    pending_entries,
    plain_members,
    queued,
    scored_members,
    stream_entries,
    text,
)
from shared.scripts import Scripts

pytestmark = pytest.mark.unit  # needs no Redis: `make test-unit`


def test_hash_reply_gives_bytes_and_empties_none() -> None:
    assert hash_reply({b"status": b"done", "pool": "p1"}) == {b"status": b"done", b"pool": b"p1"}
    assert hash_reply(None) == {}
    assert decode_hash({b"a": b"1"}) == {"a": "1"}
    assert decode_hash(None) == {}
    assert as_bytes("x") == b"x"
    assert text(b"\xff") == "\ufffd"
    assert text(None, "-") == "-"
    assert text(3) == "3"


def test_stream_entries_leaves_out_the_nil_of_a_deleted_entry() -> None:
    # XCLAIM on Redis 6.2 answers an entry deleted while pending as nil: redis-py (None, None)
    reply = [(b"1-0", {b"type": b"X"}), (None, None), (b"3-0", None)]
    assert stream_entries(reply) == [(b"1-0", {b"type": b"X"}), (b"3-0", {})]
    assert stream_entries(None) == []


def test_stream_entries_refuses_bare_ids() -> None:
    with pytest.raises(TypeError, match="not an \\(id, fields\\) entry"):
        stream_entries([b"1-0"])


def test_flatten_read_reads_resp2_lists_and_resp3_maps() -> None:
    resp2 = [[b"s1", [(b"1-0", {b"k": b"v"})]], [b"s2", [(b"2-0", None)]]]
    assert flatten_read(resp2) == [("s1", (b"1-0", {b"k": b"v"})), ("s2", (b"2-0", {}))]
    resp3 = {b"s1": [(b"1-0", {b"k": b"v"})]}
    assert flatten_read(resp3) == [("s1", (b"1-0", {b"k": b"v"}))]
    assert flatten_read(None) == []


def test_pending_entries_and_consumers() -> None:
    rows = [
        {
            "message_id": b"1-0",
            "consumer": b"w1",
            "time_since_delivered": 1500,
            "times_delivered": 2,
        }
    ]
    assert pending_entries(rows) == [PendingEntry(b"1-0", "w1", 1500, 2)]
    with pytest.raises(TypeError, match="unexpected XPENDING row"):
        pending_entries([{**rows[0], "time_since_delivered": b"x"}])
    summary = {"pending": 3, "consumers": [{"name": b"w1", "pending": 3}]}
    assert pending_consumers(summary) == ["w1"]
    assert pending_consumers({"pending": 0, "consumers": None}) == []
    assert pending_consumers(None) == []


def test_sorted_set_members() -> None:
    assert scored_members([(b"a", 1.5), [b"b", 2]]) == [(b"a", 1.5), (b"b", 2.0)]
    assert plain_members([b"a", "b"]) == [b"a", b"b"]
    with pytest.raises(TypeError, match="WITHSCORES"):
        plain_members([(b"a", 1.0)])
    with pytest.raises(TypeError, match="not a \\(member, score\\) pair"):
        scored_members([b"a"])


async def test_queued_names_each_reply_of_a_pipeline() -> None:
    client = aioredis.Redis()  # queuing sends nothing: no server needed
    pipe = client.pipeline(transaction=False)
    first = queued(pipe, pipe.get("a"))
    scripts = Scripts(client)
    script = scripts.queue(pipe, scripts.set_pool_status, ["k"], ["running"])
    members = queued(pipe, pipe.smembers("s"))
    error = ResponseError("WRONGTYPE")
    replies = [b"1", 1, error]
    assert first.reply(replies) == b"1"
    assert members.reply_or_error(replies) is error
    assert first.reply_or_error(replies) == b"1"
    assert script.reply(replies) == 1
    await client.aclose()
