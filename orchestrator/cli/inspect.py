"""Decode any of our Redis keys for `mahavishnu inspect KEY` (keys: docs/architecture.md).

The key's TYPE picks the reader: a hash shows its fields (msgpack values such as a task's
`result` and JSON strings such as a pool's `spec` decoded), a stream its first (or last) entries
with the msgpack `body` (and a dead letter's `raw` entry) decoded, plus its consumer groups, a
sorted set its members with scores as ISO times, a set its members, a string its value. Decoding
never executes anything: msgpack and JSON only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from redis.exceptions import ResponseError

from shared.codec import unpack
from shared.config import Settings
from shared.connection import Redis
from shared.errors import InvalidRequest, MalformedMessage, NotFound
from shared.replies import hash_reply, scored_members, stream_entries, text

MSGPACK_FIELDS = frozenset({"result", "body", "raw", "member"})
"""Fields whose values are msgpack (a task's result, an entry's body, a dead letter's raw entry)."""

TIME_FIELDS = frozenset({"at", "last_seen", "due"})
"""Fields holding a Unix time, besides those named `*_at`."""

# Scores between 2001 and 2286 read as Unix times (the `delayed` set scores by due time).
_MIN_TIME = 1e9
_MAX_TIME = 1e10


def iso_time(seconds: float) -> str:
    """A Unix time as an ISO 8601 UTC string with milliseconds."""
    moment = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_time_field(name: str) -> bool:
    """Whether a field of ours holds a Unix time (`submitted_at`, `last_seen`, ...)."""
    return name.endswith("_at") or name in TIME_FIELDS


def entry_time(entry_id: str) -> str | None:
    """The ISO time encoded in a stream entry id (`<ms>-<seq>`), or None if it has none."""
    millis, _, _ = entry_id.partition("-")
    return iso_time(int(millis) / 1000) if millis.isdigit() else None


def decode_value(value: bytes | str, field: str = "") -> Any:
    """Decode one stored value: msgpack for the known binary fields (or non-UTF-8 bytes),
    JSON for strings that hold an object or array, else the text. Undecodable bytes come back
    as `{"hex": ...}`. Bytes nested in a decoded value are decoded the same way, by field name.
    """
    if isinstance(value, str):
        value = value.encode()
    if field in MSGPACK_FIELDS:
        try:
            return to_jsonable(unpack(value))
        except MalformedMessage:
            pass
    try:
        decoded = value.decode("utf-8")
    except UnicodeDecodeError:
        try:
            return to_jsonable(unpack(value))
        except MalformedMessage:
            return {"hex": value.hex()}
    if decoded[:1] in ("{", "["):
        try:
            return json.loads(decoded)
        except ValueError:
            pass
    return decoded


def to_jsonable(value: Any, field: str = "") -> Any:
    """A decoded msgpack value with every nested `bytes` decoded and every key a string."""
    if isinstance(value, bytes):
        return decode_value(value, field)
    if isinstance(value, dict):
        return {text(k): to_jsonable(v, text(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v, field) for v in value]
    return value


def decode_fields(raw: Mapping[bytes, bytes]) -> dict[str, Any]:
    """A hash or stream entry's fields with names as text and values decoded."""
    return {text(k): decode_value(v, text(k)) for k, v in raw.items()}


async def resolve_key(redis: Redis, settings: Settings, key: str) -> tuple[str, str]:
    """The key to read and its TYPE; a key given without our prefix is looked up with it.

    Raises NotFound when neither exists.
    """
    candidates = [key]
    prefix = settings.key_prefix
    if not key.startswith(prefix):
        candidates.append(prefix + key)
        if key.startswith("task:"):  # a task's look-up, by the name the docs use
            candidates.append(settings.keys.task(key[len("task:") :]))
    for name in candidates:
        kind = text(await redis.type(name))
        if kind != "none":
            return name, kind
    tried = " or ".join(repr(c) for c in candidates)
    raise NotFound(f"no key {tried} in Redis (it never existed, expired or was deleted)")


async def inspect_key(
    redis: Redis, settings: Settings, key: str, *, count: int = 20, last: bool = False
) -> dict[str, Any]:
    """A JSON-ready description of one key: its type, kind, TTL and decoded content.

    `count` bounds the entries or members shown; `last` shows a stream's newest entries (in
    order) instead of its oldest. Raises NotFound for a missing key, InvalidRequest for a bad
    count or a type we do not decode.
    """
    if count < 1:
        raise InvalidRequest(f"count={count}: must be at least 1")
    name, kind = await resolve_key(redis, settings, key)
    ttl_ms = int(await redis.pttl(name))
    doc: dict[str, Any] = {
        "key": name,
        "type": kind,
        "kind": settings.keys.kind_of(name) or None,
        "ttl_s": round(ttl_ms / 1000, 3) if ttl_ms >= 0 else None,
    }
    readers = {
        "hash": _read_hash,
        "stream": _read_stream,
        "zset": _read_zset,
        "set": _read_set,
        "list": _read_list,
        "string": _read_string,
    }
    reader = readers.get(kind)
    if reader is None:
        raise InvalidRequest(f"key {name!r} is a Redis {kind}, which inspect does not decode")
    doc.update(await reader(redis, name, count, last))
    home = doc.get("fields", {}).get("home") if doc["kind"] == "task" else None
    if home and isinstance(home, str):  # the look-up hash: show the state it points to too
        state = settings.keys.pool_task(home, name[len(settings.keys.task("")) :])
        with contextlib.suppress(NotFound):
            doc["state"] = await inspect_key(redis, settings, state, count=count, last=last)
    return doc


async def _read_hash(redis: Redis, name: str, count: int, last: bool) -> dict[str, Any]:
    raw = hash_reply(await redis.hgetall(name))
    return {"fields": dict(sorted(decode_fields(raw).items()))}


async def _read_stream(redis: Redis, name: str, count: int, last: bool) -> dict[str, Any]:
    length = int(await redis.xlen(name))
    if last:
        entries = stream_entries(await redis.xrevrange(name, count=count))[::-1]
    else:
        entries = stream_entries(await redis.xrange(name, count=count))
    try:
        groups_raw = await redis.xinfo_groups(name)
    except ResponseError:
        groups_raw = []
    groups = [
        {
            "name": text(g.get("name")),
            "consumers": int(g.get("consumers") or 0),
            "pending": int(g.get("pending") or 0),
            "last_delivered_id": text(g.get("last-delivered-id")),
            "lag": None if g.get("lag") is None else int(g["lag"]),
        }
        for g in groups_raw
    ]
    shown = [
        {"id": text(entry_id), "time": entry_time(text(entry_id)), "fields": decode_fields(fields)}
        for entry_id, fields in entries
    ]
    return {"length": length, "groups": groups, "entries": shown}


async def _read_zset(redis: Redis, name: str, count: int, last: bool) -> dict[str, Any]:
    size = int(await redis.zcard(name))
    if last:
        pairs = scored_members(await redis.zrevrange(name, 0, count - 1, withscores=True))[::-1]
    else:
        pairs = scored_members(await redis.zrange(name, 0, count - 1, withscores=True))
    members = []
    for member, seconds in pairs:
        members.append(
            {
                "member": decode_value(member, "member"),
                "score": seconds,
                "time": iso_time(seconds) if _MIN_TIME <= seconds <= _MAX_TIME else None,
            }
        )
    return {"size": size, "members": members}


async def _read_set(redis: Redis, name: str, count: int, last: bool) -> dict[str, Any]:
    members = sorted(text(m) for m in await redis.smembers(name))
    return {"size": len(members), "members": members[:count]}


async def _read_list(redis: Redis, name: str, count: int, last: bool) -> dict[str, Any]:
    size = int(await redis.llen(name))
    start, stop = (-count, -1) if last else (0, count - 1)
    items = await redis.lrange(name, start, stop)
    return {"size": size, "items": [decode_value(i) for i in items]}


async def _read_string(redis: Redis, name: str, count: int, last: bool) -> dict[str, Any]:
    return {"value": decode_value(await redis.get(name) or b"")}
