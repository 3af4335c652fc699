"""Redis connections and the few stream operations every process shares.

Two kinds of connection: a normal one, whose socket timeout is `redis_command_timeout`, and a
blocking-read one whose socket timeout is that much above the longest `BLOCK`, so an XREAD that
blocks is not cut short but a Redis that stops answering is still noticed. Only connection
errors (refused, reset) are retried: a retried timeout would multiply the wait.

A `redis+cluster://` or `rediss+cluster://` URL gives a `RedisCluster` client over the same
settings, seeded with the URL's nodes (see `shared.config.parse_cluster_url`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

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
from redis.typing import EncodableT, FieldT, KeyT, StreamIdT

from shared.config import CLUSTER_SCHEMES, Settings, parse_cluster_url
from shared.errors import BrokerError, BrokerUnresponsive

# re-exported: code written before the readers moved to shared/replies.py imports them here
from shared.replies import Entry as Entry
from shared.replies import decode_hash as decode_hash
from shared.replies import flatten_read as flatten_read
from shared.replies import text as text

Redis: TypeAlias = aioredis.Redis | RedisCluster
"""A client of either broker kind (`connect`). Its connections never decode replies
(`decode_responses=False`): redis-py annotates replies as `bytes | str` unions, and the readers
of `shared/replies.py` turn them into the bytes (or str) they are."""
Pipeline: TypeAlias = StandalonePipeline | ClusterPipeline
"""A non-transactional pipeline of either client kind (`redis.pipeline(transaction=False)`)."""
Fields: TypeAlias = dict[FieldT, EncodableT]
"""A hash's or stream entry's fields to write, typed as redis-py's HSET and XADD take them
(its dict argument type is invariant: a `dict[str, str]` is refused, so annotate the dict)."""
ReadFrom: TypeAlias = dict[KeyT, StreamIdT]
"""Streams to read and the id to read each after, as XREAD and XREADGROUP take them."""

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
