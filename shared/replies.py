"""Reading Redis replies: redis-py's reply unions as the types they are, and a pipeline's
replies by name.

redis-py annotates replies as `bytes | str` unions (and some as several shapes at once); the
connections of `shared/connection.py` never decode them, so these readers check and return
bytes (or str where a reader says so). A pipeline's replies come back as one untyped list:
`queued(pipe, pipe.hgetall(key))` names a command as it is queued, and `.reply(replies)` reads
its reply, typed as redis-py declares it, without counting positions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar, cast

from redis.typing import (
    XClaimResponse,
    XPendingRangeResponse,
    XReadGroupResponse,
    XReadResponse,
    ZSetRangeResponse,
)

if TYPE_CHECKING:
    from shared.connection import Pipeline

Entry = tuple[bytes, dict[bytes, bytes]]
"""A stream entry: its id and fields."""

_T = TypeVar("_T")
_K = TypeVar("_K", bound=bytes | str)
_V = TypeVar("_V", bound=bytes | str)


@dataclass(frozen=True)
class Queued(Generic[_T]):
    """A command queued on a pipeline, named so its reply is read by name, not by counting
    positions: `load = queued(pipe, pipe.hgetall(key))`, then `load.reply(replies)`."""

    index: int

    def reply(self, replies: Sequence[Any]) -> _T:
        """Its reply among the pipeline's `replies`, of the type redis-py gives the command
        (with `raise_on_error=False`, an error reply is the exception: see `reply_or_error`)."""
        return cast(_T, replies[self.index])

    def reply_or_error(self, replies: Sequence[Any]) -> _T | Exception:
        """Its reply, or the exception a pipeline run with `raise_on_error=False` put there."""
        found = replies[self.index]
        return found if isinstance(found, Exception) else cast(_T, found)


def queued(pipe: Pipeline, command: Awaitable[_T]) -> Queued[_T]:
    """Name the command just queued on `pipe`; pass the call itself, which queues it and gives
    the reply's type: `queued(pipe, pipe.get(key))`."""
    del command  # a queued call returns the pipeline; only its declared type is used
    return Queued(len(pipe) - 1)


def as_bytes(value: bytes | str) -> bytes:
    """A reply value as bytes (what a connection that does not decode replies gives)."""
    return value if isinstance(value, bytes) else value.encode()


def text(value: bytes | str | int | float | None, default: str = "") -> str:
    """A Redis reply value as str."""
    if value is None:
        return default
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def hash_reply(raw: Mapping[_K, _V] | None) -> dict[bytes, bytes]:
    """A HGETALL reply (or a stream entry's fields) with bytes keys and values; None (a
    deleted entry's fields) is empty."""
    if not raw:
        return {}
    if isinstance(raw, dict):  # bytes already, as this connection gives them: no copy
        for key, value in raw.items():
            if not isinstance(key, bytes) or not isinstance(value, bytes):
                break
        else:
            return cast(dict[bytes, bytes], raw)
    return {as_bytes(k): as_bytes(v) for k, v in raw.items()}


def decode_hash(raw: Mapping[_K, _V] | None) -> dict[str, str]:
    """A HGETALL reply with str keys and values."""
    if not raw:
        return {}
    return {text(k): text(v) for k, v in raw.items()}


def stream_entries(raw: XClaimResponse | None) -> list[Entry]:
    """An XRANGE/XREVRANGE reply, or XCLAIM's (without JUSTID), as entries in order.

    An entry deleted while it was pending has no fields here; XCLAIM on Redis < 7 answers it as
    nil, without even its id, and it is left out (`claimed_entries` finds its id).
    """
    entries: list[Entry] = []
    for item in raw or ():
        entry = _entry(item)
        if entry is not None:
            entries.append(entry)
    return entries


def _entry(item: object) -> Entry | None:
    """One entry of a stream reply: (id, fields) as redis-py parses it; None for the nil of
    an entry deleted while pending."""
    if type(item) is tuple and len(item) == 2:  # as redis-py parses an entry: the hot path
        entry_id, fields = item
        if type(entry_id) is bytes and type(fields) is dict:
            return entry_id, hash_reply(fields)
    if not isinstance(item, tuple | list) or len(item) < 2:
        raise TypeError(f"a stream reply holds {item!r}, not an (id, fields) entry")
    entry_id, fields = item[0], item[1]
    if entry_id is None:
        return None
    if not isinstance(entry_id, bytes | str) or not isinstance(fields, dict | None):
        raise TypeError(f"a stream reply holds {item!r}, not an (id, fields) entry")
    return as_bytes(entry_id), hash_reply(fields)


def flatten_read(reply: XReadResponse | XReadGroupResponse | None) -> list[tuple[str, Entry]]:
    """XREAD/XREADGROUP reply (RESP2 list or RESP3 dict) as (stream, entry) pairs in order."""
    pairs: list[tuple[str, Entry]] = []
    if not reply:
        return pairs
    items = reply.items() if isinstance(reply, dict) else reply
    for stream, entries in items:
        name = text(stream)
        for item in entries:
            entry = _entry(item)
            if entry is not None:
                pairs.append((name, entry))
    return pairs


def scored_members(raw: ZSetRangeResponse) -> list[tuple[bytes, float]]:
    """A ZRANGE ... WITHSCORES reply as (member, score) pairs."""
    pairs = []
    for item in raw:
        if isinstance(item, bytes | str) or len(item) != 2:
            raise TypeError(f"a WITHSCORES reply holds {item!r}, not a (member, score) pair")
        member, score = item[0], item[1]
        pairs.append((as_bytes(member), float(score)))
    return pairs


def plain_members(raw: ZSetRangeResponse) -> list[bytes]:
    """A ZRANGE (or ZRANGEBYSCORE) reply without scores as its members."""
    members = []
    for item in raw:
        if not isinstance(item, bytes | str):
            raise TypeError(f"a sorted-set reply holds {item!r}, not a member (WITHSCORES?)")
        members.append(as_bytes(item))
    return members


class PendingEntry(NamedTuple):
    """One row of XPENDING's extended form."""

    entry_id: bytes
    consumer: str
    idle_ms: int
    deliveries: int


def pending_entries(raw: XPendingRangeResponse) -> list[PendingEntry]:
    """An XPENDING start end count [consumer] reply (redis-py's dicts) as typed rows."""
    rows = []
    for row in raw:
        entry_id, consumer = row["message_id"], row["consumer"]
        idle, deliveries = row["time_since_delivered"], row["times_delivered"]
        if isinstance(entry_id, int) or isinstance(idle, bytes | str):
            raise TypeError(f"unexpected XPENDING row {row!r}")
        rows.append(PendingEntry(as_bytes(entry_id), text(consumer), idle, int(deliveries)))
    return rows


def pending_consumers(summary: Mapping[str, Any] | None) -> list[str]:
    """Names of the consumers holding entries in an XPENDING summary (none if none pending)."""
    if not summary or not summary.get("pending"):
        return []
    return [text(c["name"]) for c in summary.get("consumers") or []]
