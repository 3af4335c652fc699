"""Redis connections and the few stream operations every process shares.

Two kinds of connection: a normal one, whose socket timeout is `redis_command_timeout`, and a
blocking-read one whose socket timeout is that much above the longest `BLOCK`, so an XREAD that
blocks is not cut short but a Redis that stops answering is still noticed. Only connection
errors (refused, reset) are retried: a retried timeout would multiply the wait.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import (
    BlockingConnectionPool,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    DataError,
    MasterDownError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.config import Settings
from shared.errors import BrokerError, BrokerUnresponsive

# redis-py annotates replies as unions that change with the protocol version, and command
# arguments with types narrower than the mappings we pass; clients are typed loosely and every
# reply is converted on read (`text`, `decode_hash`, `flatten_read`).
Redis = Any
Entry = tuple[bytes, dict[bytes, bytes]]

MAX_CONNECTIONS = 64  # per client; more concurrent commands wait for a free connection
CONNECTION_WAIT = 30.0  # seconds a command waits for a free connection
LONGEST_CLIENT_BLOCK_MS = 5000  # the longest BLOCK of the client's readers (shared/readers.py)

TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,  # a restarted server loading its AOF
    TryAgainError,
    MasterDownError,
    ReadOnlyError,  # a failover in progress
    ClusterDownError,
    ConnectionError,
    OSError,
)
"""Errors after which the same call can succeed later: loops back off and try again."""


def connect(settings: Settings, *, blocking: bool = False, retries: int = 5) -> Redis:
    """A client for the configured broker. `blocking=True` for connections that XREAD BLOCK.

    redis-py re-sends a whole pipeline after a dropped connection, even when the server had
    run it; processes whose writes must not repeat (workers, orchestrators) pass `retries=0` and
    retry at a level where their writes are guarded.
    """
    retry = Retry(
        ExponentialBackoff(cap=2.0, base=0.05),
        retries=retries,
        supported_errors=(RedisConnectionError,),
    )
    timeout = blocking_socket_timeout(settings) if blocking else settings.redis_command_timeout
    # a blocking pool makes the 101st concurrent command wait for a connection instead of
    # failing with "Too many connections" (redis-py's default pool holds 100)
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=MAX_CONNECTIONS,
        timeout=CONNECTION_WAIT,
        decode_responses=False,
        socket_timeout=timeout,
        socket_connect_timeout=min(5.0, settings.redis_command_timeout),
        health_check_interval=30,
        retry=retry,
        retry_on_error=[RedisConnectionError],
        protocol=2,
    )
    pool.connection_class = _HIREDIS_PACKED.get(pool.connection_class, pool.connection_class)
    return aioredis.Redis.from_pool(pool)


def blocking_socket_timeout(settings: Settings) -> float:
    """Socket timeout of blocking-read connections: `redis_command_timeout` above the longest
    BLOCK any reader uses (a worker's `worker_block_ms`, the client's readers)."""
    longest_ms = max(settings.worker_block_ms, LONGEST_CLIENT_BLOCK_MS)
    return longest_ms / 1000 + settings.redis_command_timeout


class _HiredisPacking:
    """Packs commands with hiredis's C packer; redis-py's asyncio connections pack in Python,
    which was a sixth of a worker's CPU."""

    def pack_command(self, *args: Any) -> list[bytes]:
        head = args[0]
        if isinstance(head, str):  # "SCRIPT LOAD"-style names are several words
            args = (*head.encode().split(), *args[1:])
        elif b" " in head:
            args = (*head.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:  # hiredis takes bytes, str, int and float; copy buffers to bytes
            packable: Any = tuple(bytes(a) if isinstance(a, bytearray) else a for a in args)
            try:
                return [hiredis.pack_command(packable)]
            except TypeError as exc:
                raise DataError(str(exc)) from None


class _PackedConnection(_HiredisPacking, Connection):
    pass


class _PackedSSLConnection(_HiredisPacking, SSLConnection):
    pass


class _PackedUnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    pass


_HIREDIS_PACKED: dict[type[Any], type[Any]] = {
    Connection: _PackedConnection,
    SSLConnection: _PackedSSLConnection,
    UnixDomainSocketConnection: _PackedUnixConnection,
}


async def ping(settings: Settings) -> bool:
    """Whether the configured broker answers PING."""
    client = aioredis.Redis.from_url(
        settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0, protocol=2
    )
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False
    finally:
        await client.aclose()


async def server_version(redis: Redis) -> tuple[int, ...]:
    """The server's version as a tuple, e.g. (7, 0, 15)."""
    info = await redis.info("server")
    raw = str(info.get("redis_version", info.get("valkey_version", "0")))
    return tuple(int(p) for p in raw.split(".") if p.isdigit())


async def ensure_group(redis: Redis, stream: str, group: str) -> None:
    """Create a consumer group at id 0 with MKSTREAM; an existing group is left as it is."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def ack_and_delete(pipe: Any, stream: str, group: str, ids: Sequence[bytes | str]) -> None:
    """Queue XACK and XDEL of `ids` on a pipeline, so acknowledged entries never pile up."""
    if ids:
        pipe.xack(stream, group, *ids)
        pipe.xdel(stream, *ids)


async def read_own_pending(
    reader: Redis,
    redis: Redis,
    group: str,
    consumer: str,
    streams: Sequence[str],
    known: set[bytes],
) -> list[tuple[str, Entry]]:
    """Entries delivered to `consumer` that it does not know: a read whose reply was lost with
    a dropped connection leaves them pending on a live consumer that never saw them.

    Entries deleted meanwhile are acknowledged here; the rest are returned to be handled.
    """
    reply = await reader.xreadgroup(group, consumer, dict.fromkeys(streams, "0"), count=10_000)
    found = [(s, e) for s, e in flatten_read(reply) if e[0] not in known]
    gone = [(s, e[0]) for s, e in found if not e[1]]
    if gone:
        pipe = redis.pipeline(transaction=False)
        for stream, entry_id in gone:
            ack_and_delete(pipe, stream, group, [entry_id])
        await pipe.execute()
    return [(s, e) for s, e in found if e[1]]


def text(value: bytes | str | None, default: str = "") -> str:
    """A Redis reply value as str."""
    if value is None:
        return default
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def decode_hash(raw: dict[Any, Any]) -> dict[str, str]:
    """A HGETALL reply with str keys and values."""
    return {text(k): text(v) for k, v in raw.items()}


def flatten_read(reply: Iterable[Any] | None) -> list[tuple[str, Entry]]:
    """XREAD/XREADGROUP reply (RESP2 list or RESP3 dict) as (stream, entry) pairs in order."""
    pairs: list[tuple[str, Entry]] = []
    if not reply:
        return pairs
    items = reply.items() if isinstance(reply, dict) else reply
    for stream, entries in items:
        name = text(stream)
        for entry in entries:
            entry_id, fields = entry
            pairs.append((name, (entry_id, fields or {})))
    return pairs


def broker_error(exc: BaseException, settings: Settings) -> BrokerError:
    """A BrokerError naming the (redacted) URL that failed."""
    return BrokerError(f"Redis at {settings.redis_url_redacted} is not reachable: {exc}")


def unresponsive(settings: Settings) -> BrokerUnresponsive:
    """The error for a command that timed out: `Redis at URL did not answer within N s`."""
    return BrokerUnresponsive(settings.redis_url_redacted, settings.redis_command_timeout)


def as_broker_error(exc: BaseException, settings: Settings) -> BaseException:
    """`exc`, or BrokerUnresponsive when it is a redis-py TimeoutError (for callers that report
    errors to people: the CLI, the MCP facade)."""
    return unresponsive(settings) if isinstance(exc, RedisTimeoutError) else exc
