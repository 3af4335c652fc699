"""Redis connections and the few stream operations every process shares.

Two kinds of connection: a normal one, whose socket timeout is `redis_command_timeout`, and a
blocking-read one whose socket timeout is that much above the longest `BLOCK`, so an XREAD that
blocks is not cut short but a Redis that stops answering is still noticed. Only connection
errors (refused, reset) are retried: a retried timeout would multiply the wait.

A `redis+cluster://` or `rediss+cluster://` URL gives a `RedisCluster` client over the same
settings, seeded with the URL's nodes (see `shared.config.parse_cluster_url`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeAlias, TypeVar, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline as StandalonePipeline
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import (
    BlockingConnectionPool,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    to_bool,
)
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    DataError,
    MasterDownError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import (
    EncodableT,
    FieldT,
    KeyT,
    StreamIdT,
    XClaimResponse,
    XPendingRangeResponse,
    XReadGroupResponse,
    XReadResponse,
    ZSetRangeResponse,
)

from shared.config import CLUSTER_SCHEMES, Settings, parse_cluster_url
from shared.errors import BrokerError, BrokerUnresponsive

Redis: TypeAlias = aioredis.Redis | RedisCluster
"""A client of either broker kind (`connect`). Its connections never decode replies
(`decode_responses=False`): redis-py annotates replies as `bytes | str` unions, and the readers
below (`hash_reply`, `stream_entries`, `flatten_read`, `pending_entries`, `text`) turn them into
the bytes (or str) they are."""
Pipeline: TypeAlias = StandalonePipeline | ClusterPipeline
"""A non-transactional pipeline of either client kind (`redis.pipeline(transaction=False)`)."""
Entry = tuple[bytes, dict[bytes, bytes]]
"""A stream entry: its id and fields."""
Fields: TypeAlias = dict[FieldT, EncodableT]
"""A hash's or stream entry's fields to write, typed as redis-py's HSET and XADD take them
(its dict argument type is invariant: a `dict[str, str]` is refused, so annotate the dict)."""
ReadFrom: TypeAlias = dict[KeyT, StreamIdT]
"""Streams to read and the id to read each after, as XREAD and XREADGROUP take them."""

_T = TypeVar("_T")
_K = TypeVar("_K", bound=bytes | str)
_V = TypeVar("_V", bound=bytes | str)

MAX_CONNECTIONS = 64  # per client; more concurrent commands wait for a free connection
CONNECTION_WAIT = 30.0  # seconds a command waits for a free connection
LONGEST_CLIENT_BLOCK_MS = 5000  # the longest BLOCK of the client's readers (shared/readers.py)
# RedisCluster's per-node pools do not wait for a free connection: past the limit a command
# fails with MaxConnectionsError, so the limit is a leak guard well above any real concurrency
CLUSTER_NODE_MAX_CONNECTIONS = 1000
UNSENT_RETRIES = 3  # times a cluster command that failed before it was sent is sent again

TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,  # a restarted server loading its AOF
    TryAgainError,
    MasterDownError,
    ReadOnlyError,  # a failover in progress
    ClusterDownError,
    ClusterError,  # RedisCluster gave up following MOVED/ASK redirections ("TTL exhausted")
    SlotNotCoveredError,  # RedisCluster's slot map has a hole until it reloads it
    ConnectionError,
    OSError,
)
"""Errors after which the same call can succeed later: loops back off and try again.

RedisCluster follows MOVED and ASK redirections itself (and re-sends redirected pipeline
commands one by one), so those never reach callers."""


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
    connect_timeout = min(5.0, settings.redis_command_timeout)
    if is_cluster_url(settings.redis_url):
        return _cluster_client(
            settings.redis_url,
            socket_timeout=timeout,
            connect_timeout=connect_timeout,
            retry=retry,
            health_check_interval=30,
        )
    # a blocking pool makes the 101st concurrent command wait for a connection instead of
    # failing with "Too many connections" (redis-py's default pool holds 100)
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=MAX_CONNECTIONS,
        timeout=CONNECTION_WAIT,
        decode_responses=False,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        health_check_interval=30,
        retry=retry,
        retry_on_error=[RedisConnectionError],
        protocol=2,
    )
    pool.connection_class = _HIREDIS_PACKED.get(pool.connection_class, pool.connection_class)
    return aioredis.Redis.from_pool(pool)


def is_cluster_url(url: str) -> bool:
    """Whether `url` names a Redis Cluster (`redis+cluster://` or `rediss+cluster://`)."""
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


class _Cluster(RedisCluster):
    """RedisCluster with the retry rules of the standalone client: connection errors are
    retried (`retry`'s count), timeouts are not. The one gap: ClusterPipeline reads
    `RedisCluster.ERRORS_ALLOW_RETRY` by name, so a pipeline with `retries` > 0 does re-send
    after a timeout."""

    ERRORS_ALLOW_RETRY = (  # type: ignore[assignment]  # a 3-tuple for redis-py's 4-tuple
        RedisConnectionError,
        ClusterDownError,
        SlotNotCoveredError,
    )

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        # redis-py 8.1's cluster client can hand a command a connection whose socket another
        # coroutine just closed (many concurrent first commands): it fails before anything
        # is written ('NoneType' object has no attribute 'writelines'), so sending it again
        # is safe
        for attempt in range(UNSENT_RETRIES + 1):
            try:
                return await super().execute_command(*args, **kwargs)
            except AttributeError as exc:
                if "writelines" not in str(exc):
                    raise
                if attempt == UNSENT_RETRIES:
                    message = f"connection closed under a command: {exc}"
                    raise RedisConnectionError(message) from exc
        raise AssertionError("unreachable")

    async def initialize(
        self,
        additional_startup_nodes_info: list[tuple[str, int]] | None = None,
        last_failed_node_name: str | None = None,
    ) -> RedisCluster:
        # RedisCluster reports "no seed node answers" as a RedisClusterException, which is no
        # RedisError; raised as the ConnectionError it wraps, it is handled like a standalone
        # server that is down.
        try:
            return await super().initialize(additional_startup_nodes_info, last_failed_node_name)
        except RedisClusterException as exc:
            if isinstance(exc.__cause__, RedisConnectionError | RedisTimeoutError | OSError):
                raise RedisConnectionError(str(exc)) from exc
            raise


def _cluster_client(
    url: str,
    *,
    socket_timeout: float,
    connect_timeout: float,
    retry: Retry,
    health_check_interval: float = 0,
) -> RedisCluster:
    target = parse_cluster_url(url)
    tls: dict[str, Any] = dict(target.options)
    if "ssl_check_hostname" in tls:
        tls["ssl_check_hostname"] = to_bool(tls["ssl_check_hostname"])
    client = _Cluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        username=target.username,
        password=target.password,
        ssl=target.tls,
        **tls,
        max_connections=CLUSTER_NODE_MAX_CONNECTIONS,
        decode_responses=False,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        health_check_interval=health_check_interval,
        retry=retry,
        protocol=2,
    )
    # RedisCluster takes no connection_class: it fixes one in `connection_kwargs`, a dict its
    # NodesManager shares and builds every discovered node from; the seed nodes exist already.
    plain = client.connection_kwargs["connection_class"]
    packed = _HIREDIS_PACKED.get(plain, plain)
    client.connection_kwargs["connection_class"] = packed
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = packed
    return client


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
    """Whether the configured broker answers PING (for a cluster: every primary)."""
    client: Redis
    if is_cluster_url(settings.redis_url):
        client = _cluster_client(
            settings.redis_url,
            socket_timeout=2.0,
            connect_timeout=2.0,
            retry=Retry(NoBackoff(), retries=0),
        )
    else:
        client = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0, protocol=2
        )
    try:
        return bool(await client.ping())
    except (RedisError, RedisClusterException, OSError):
        return False
    finally:
        await client.aclose()


async def server_version(redis: Redis) -> tuple[int, ...]:
    """The server's version as a tuple, e.g. (7, 0, 15); for a cluster, one node's."""
    if isinstance(redis, RedisCluster):
        info = await redis.info("server", target_nodes=RedisCluster.DEFAULT_NODE)
    else:
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


def ack_and_delete(pipe: Pipeline, stream: str, group: str, ids: Sequence[bytes | str]) -> None:
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
