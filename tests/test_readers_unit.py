"""The client's blocking readers (shared/readers.py) without Redis: which reply resolves which
future, what is kept for later, where each read starts, and what is trimmed.

The Redis is a fake whose XREAD hands out replies the test queues, shaped as redis-py 8 gives
them over RESP2 with `decode_responses=False` (`[[stream, [(id, {field: value})]]]`, `[]` for
nothing), and otherwise blocks on an event the test controls; `settle()` waits until the reader
has taken every queued reply and blocks for more. No sleep synchronises anything."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

import shared.readers as readers_module
from shared.codec import ResultShare, StatusUpdate, TaskCompleted, encode
from shared.models import TaskResult, TaskStatus
from shared.readers import CompletionWatcher, ReplyReader, _after
from tests.unit_fakes import as_reply

pytestmark = pytest.mark.unit  # needs no Redis: `make test-unit`

KEY = "unit:replies:{c-1}"
EVENTS = "unit:{events}"
Entry = tuple[bytes, dict[bytes, bytes]]


class FakeStreamRedis:
    """XREAD from a queue of canned replies (an Exception is raised), blocking while it is
    empty; EXISTS, XREVRANGE and XTRIM answer from attributes and are logged."""

    def __init__(self) -> None:
        self.replies: list[Any] = []
        self.reads: list[dict[str, bytes]] = []  # the streams argument of each XREAD
        self.trims: list[tuple[str, str, bool]] = []
        self.exists_calls: list[str] = []
        self.stream_exists = 1
        self.newest: list[Entry] | Exception = []  # the XREVRANGE COUNT 1 reply
        self.revranges = 0
        self.blocking = False
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()

    def push(self, *replies: Any) -> None:
        self.replies.extend(replies)
        self._wake.set()

    async def settle(self) -> None:
        """Wait until every queued reply was taken and the reader blocks in XREAD again (a
        reader that stopped reading fails the test within a second instead of hanging it)."""
        async with asyncio.timeout(1):
            while self.replies or not self.blocking:
                self._changed.clear()
                await self._changed.wait()

    def _state(self, blocking: bool) -> None:
        self.blocking = blocking
        self._changed.set()

    async def xread(self, streams: dict[str, bytes], count: int, block: int) -> Any:
        self.reads.append(dict(streams))
        while not self.replies:
            self._wake.clear()
            self._state(blocking=True)
            await self._wake.wait()
        self._state(blocking=False)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def exists(self, key: str) -> int:
        self.exists_calls.append(key)
        return self.stream_exists

    async def xrevrange(self, key: str, count: int) -> list[Entry]:
        self.revranges += 1
        if isinstance(self.newest, Exception):
            raise self.newest
        return self.newest

    async def xtrim(self, key: str, minid: str, approximate: bool) -> int:
        self.trims.append((key, minid, approximate))
        return 0


def reply_entry(entry_id: bytes, task_id: str, output: Any = None) -> Entry:
    result = TaskResult(task_id=task_id, status=TaskStatus.COMPLETED, output=output)
    return entry_id, as_reply(encode(ResultShare(result=result)))


def completed_entry(entry_id: bytes, task_id: str) -> Entry:
    event = TaskCompleted(
        task_id=task_id, pool_id="p1", worker_id="w1", status=TaskStatus.COMPLETED
    )
    return entry_id, as_reply(encode(event))


def read(key: str, *entries: Entry) -> list[Any]:
    """An XREAD reply of one stream."""
    return [[key.encode(), list(entries)]]


@pytest.fixture
def fake() -> FakeStreamRedis:
    return FakeStreamRedis()


@pytest.fixture
async def reader(fake: FakeStreamRedis) -> AsyncIterator[ReplyReader]:
    value = ReplyReader(fake, KEY)
    yield value
    await value.aclose()


@pytest.fixture
async def watcher(fake: FakeStreamRedis) -> AsyncIterator[CompletionWatcher]:
    value = CompletionWatcher(fake, EVENTS)
    yield value
    await value.aclose()


# --- ReplyReader ---------------------------------------------------------------------------


async def test_a_reply_resolves_the_future_of_its_task(
    fake: FakeStreamRedis, reader: ReplyReader
) -> None:
    fut = reader.expect("t-1")
    fake.push(read(KEY, reply_entry(b"5-0", "t-1", output=3)))
    await fake.settle()
    assert fut.done() and fut.result().output == 3


async def test_a_task_expected_twice_has_one_future_which_awaiting_returns(
    reader: ReplyReader,
) -> None:
    fut = reader.expect("t-1")
    assert reader.expect("t-1") is fut
    assert reader.awaiting("t-1") is fut
    assert reader.awaiting("t-2") is None  # not submitted by this client


async def test_a_reply_for_a_task_not_expected_resolves_nothing_and_is_kept_for_its_expect(
    fake: FakeStreamRedis, reader: ReplyReader
) -> None:
    fut = reader.expect("t-1")
    fake.push(read(KEY, reply_entry(b"5-0", "t-2", output="early")))
    await fake.settle()
    assert not fut.done()
    assert reader.awaiting("t-2") is None
    early = reader.expect("t-2")  # the reply beat the submit call's expect
    assert early.done() and early.result().output == "early"


async def test_a_duplicate_reply_keeps_the_first_result_and_the_reader_reading(
    fake: FakeStreamRedis, reader: ReplyReader
) -> None:
    first = reader.expect("t-1")
    second = reader.expect("t-2")
    fake.push(
        read(KEY, reply_entry(b"5-0", "t-1", output="first"), reply_entry(b"5-1", "t-1", "again")),
        read(KEY, reply_entry(b"6-0", "t-2", output="next")),
    )
    await fake.settle()
    assert first.result().output == "first"
    assert second.result().output == "next"


async def test_a_forgotten_task_is_no_longer_awaited(
    fake: FakeStreamRedis, reader: ReplyReader
) -> None:
    reader.expect("t-1")
    kept = reader.expect("t-2")
    reader.forget("t-1")
    assert reader.awaiting("t-1") is None
    assert reader.awaiting("t-2") is kept


async def test_the_reader_reads_on_after_the_last_entry_and_trims_up_to_it(
    fake: FakeStreamRedis, reader: ReplyReader
) -> None:
    reader.expect("t-1")
    fake.push(read(KEY, reply_entry(b"5-0", "t-1"), reply_entry(b"5-1", "t-2")))
    await fake.settle()
    assert fake.reads == [{KEY: b"0-0"}, {KEY: b"5-1"}]
    assert fake.trims == [(KEY, "5-2", False)]  # exact: every entry read, none unread


async def test_unreadable_and_foreign_entries_are_skipped_but_read_past(
    fake: FakeStreamRedis, reader: ReplyReader
) -> None:
    fut = reader.expect("t-1")
    garbage = (b"5-0", {b"type": b"RESULT_SHARE", b"body": b"\xc1"})
    other = (b"5-1", as_reply(encode(StatusUpdate(pool_id="p1"))))
    fake.push(read(KEY, garbage, other, reply_entry(b"5-2", "t-1", output="ok")))
    await fake.settle()
    assert fut.result().output == "ok"
    assert fake.trims == [(KEY, "5-3", False)]


async def test_a_read_that_finds_nothing_starts_over_when_the_stream_is_gone(
    fake: FakeStreamRedis, reader: ReplyReader
) -> None:
    reader.expect("t-1")
    fake.push(read(KEY, reply_entry(b"9-0", "t-9")), [])
    await fake.settle()
    assert fake.reads[-1] == {KEY: b"9-0"}  # still there: read on from the last entry
    fake.stream_exists = 0  # FLUSHDB, a restarted Redis, an expired reply stream
    fake.push([])
    await fake.settle()
    assert fake.reads[-1] == {KEY: b"0-0"}
    assert fake.exists_calls == [KEY, KEY]


async def test_a_reader_that_has_read_nothing_does_not_ask_whether_the_stream_exists(
    fake: FakeStreamRedis, reader: ReplyReader
) -> None:
    reader.expect("t-1")
    fake.push([], [])
    await fake.settle()
    assert fake.exists_calls == [] and fake.trims == []
    assert fake.reads == [{KEY: b"0-0"}] * 3


async def test_a_redis_error_does_not_stop_the_reader(
    fake: FakeStreamRedis, reader: ReplyReader
) -> None:
    fut = reader.expect("t-1")
    fake.push(RedisConnectionError("reset"), read(KEY, reply_entry(b"5-0", "t-1", output=1)))
    await fake.settle()
    assert fut.result().output == 1
    assert fake.reads == [{KEY: b"0-0"}, {KEY: b"0-0"}, {KEY: b"5-0"}]


async def test_closing_the_reader_cancels_the_futures_still_waiting(
    fake: FakeStreamRedis,
) -> None:
    reader = ReplyReader(fake, KEY)
    fut = reader.expect("t-1")
    await fake.settle()
    await reader.aclose()
    assert fut.cancelled()


async def test_a_result_nobody_asked_for_is_dropped_once_too_many_wait(
    fake: FakeStreamRedis, reader: ReplyReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers_module, "MAX_UNCLAIMED", 2)
    for n in (1, 2, 3):
        reader.expect(f"t-{n}")
    fake.push(read(KEY, *(reply_entry(f"5-{n}".encode(), f"t-{n}") for n in (1, 2, 3))))
    await fake.settle()
    assert reader.awaiting("t-1") is None  # the oldest: a later result() reads its hash
    assert [reader.awaiting(t) is not None for t in ("t-2", "t-3")] == [True, True]


async def test_replies_that_arrive_before_their_expect_are_bounded_oldest_first(
    fake: FakeStreamRedis, reader: ReplyReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers_module, "MAX_UNCLAIMED", 2)
    reader.expect("t-0")
    fake.push(read(KEY, *(reply_entry(f"5-{n}".encode(), f"t-{n}") for n in (1, 2, 3))))
    await fake.settle()
    assert not reader.expect("t-1").done()
    assert reader.expect("t-2").done() and reader.expect("t-3").done()


@pytest.mark.parametrize(
    ("entry_id", "after"),
    [(b"1700000000000-0", "1700000000000-1"), (b"5-41", "5-42"), (b"5", "5-1")],
)
def test_the_trim_point_is_the_smallest_id_above_the_last_entry_read(
    entry_id: bytes, after: str
) -> None:
    assert _after(entry_id) == after


# --- CompletionWatcher ---------------------------------------------------------------------


async def test_a_watch_starts_reading_after_the_newest_event_so_none_written_later_slips_by(
    fake: FakeStreamRedis, watcher: CompletionWatcher
) -> None:
    fake.newest = [completed_entry(b"9-0", "t-1")]  # an old completion of the same task
    event = await watcher.watch("t-1")
    await fake.settle()
    assert fake.reads == [{EVENTS: b"9-0"}]
    assert not event.is_set()


async def test_an_empty_events_stream_is_read_from_its_start(
    fake: FakeStreamRedis, watcher: CompletionWatcher
) -> None:
    await watcher.watch("t-1")
    await fake.settle()
    assert fake.reads == [{EVENTS: b"0-0"}]


async def test_when_the_newest_event_cannot_be_read_only_new_events_are_read(
    fake: FakeStreamRedis, watcher: CompletionWatcher
) -> None:
    fake.newest = RedisConnectionError("refused")
    await watcher.watch("t-1")
    fake.push([])
    await fake.settle()
    assert fake.reads == [{EVENTS: b"$"}, {EVENTS: b"$"}]
    assert fake.exists_calls == []  # "$" cannot be gone


async def test_a_task_completed_event_wakes_every_waiter_of_that_task_only(
    fake: FakeStreamRedis, watcher: CompletionWatcher
) -> None:
    first = await watcher.watch("t-1")
    second = await watcher.watch("t-1")
    other = await watcher.watch("t-2")
    status = (b"1-0", {**as_reply(encode(StatusUpdate(pool_id="p1"))), b"task": b"t-2"})
    fake.push(read(EVENTS, status, completed_entry(b"1-1", "t-1")))
    await fake.settle()
    assert first.is_set() and second.is_set()
    assert not other.is_set()  # only a TASK_COMPLETED counts
    assert fake.reads[-1] == {EVENTS: b"1-1"}


async def test_an_unwatched_waiter_is_not_woken(
    fake: FakeStreamRedis, watcher: CompletionWatcher
) -> None:
    gone = await watcher.watch("t-1")
    kept = await watcher.watch("t-1")
    watcher.unwatch("t-1", gone)
    fake.push(read(EVENTS, completed_entry(b"1-0", "t-1")))
    await fake.settle()
    assert kept.is_set() and not gone.is_set()


async def test_the_watcher_stops_once_nobody_waits_and_the_next_watch_starts_afresh(
    fake: FakeStreamRedis, watcher: CompletionWatcher
) -> None:
    event = await watcher.watch("t-1")
    await fake.settle()
    watcher.unwatch("t-1", event)
    first_reader = watcher._task
    assert first_reader is not None
    fake.push([])  # the blocked read returns: nobody waits any more
    await asyncio.wait_for(first_reader, timeout=1)
    fake.newest = [completed_entry(b"7-0", "t-0")]
    await watcher.watch("t-2")
    await fake.settle()
    assert fake.revranges == 2
    assert fake.reads[-1] == {EVENTS: b"7-0"}


async def test_a_gone_events_stream_is_read_again_from_its_start(
    fake: FakeStreamRedis, watcher: CompletionWatcher
) -> None:
    fake.newest = [completed_entry(b"9-0", "t-0")]
    event = await watcher.watch("t-1")
    fake.stream_exists = 0
    fake.push([], read(EVENTS, completed_entry(b"1-0", "t-1")))  # a new stream, smaller ids
    await fake.settle()
    assert fake.reads[:2] == [{EVENTS: b"9-0"}, {EVENTS: b"0-0"}]
    assert event.is_set()
