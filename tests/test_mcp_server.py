"""The MCP facade through the SDK's real client: every tool and error path in-process, stdio and
streamable HTTP (bearer token, Host checks) against facade processes, tasks on real workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult

from orchestrator.broker import free_port
from orchestrator.mcp.http import BearerAuth, check_token, is_loopback, transport_security
from orchestrator.mcp.server import build_server, http_app, run_mcp
from orchestrator.orchestrator import Orchestrator
from shared.codec import TaskDelegate, decode, encode
from shared.config import Settings
from shared.connection import Redis, connect, text
from shared.errors import ConfigError
from shared.finals import dead_letter_record, queue_dead_letter
from shared.models import PoolSpec, PoolStatus, TaskSpec
from shared.state import pool_hash_fields

REPO = Path(__file__).resolve().parent.parent
TOKEN = "test-token-" + "x" * 32
TOOLS = {
    "pool_spawn", "pool_execute", "pool_route_execute", "pool_list", "pool_monitor",
    "pool_scale", "pool_close", "pool_close_all", "pool_health", "pool_search_memory",
    "task_submit", "task_status", "task_result", "task_cancel", "pool_dead_letters",
}  # fmt: skip

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture
async def settings() -> AsyncIterator[Settings]:
    s = Settings(
        key_prefix=f"test-{os.urandom(4).hex()}:", spawn_timeout=30.0, mcp_allow_pool_code=True
    )
    yield s
    redis = connect(s)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{s.key_prefix}*", count=1000)]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = connect(settings)
    yield client
    await client.aclose()


@contextlib.asynccontextmanager
async def held(target: Any) -> AsyncIterator[Client]:
    """A connected Client whose context lives in one task of its own (anyio cancel scopes must
    be entered and left in the same task; pytest-asyncio sets fixtures up and tears them down
    in different ones)."""
    ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def hold() -> None:
        async with Client(target) as c:
            ready.set_result(c)
            await stop.wait()

    task = asyncio.create_task(hold())
    waiters: list[asyncio.Future[Any]] = [task, ready]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        await task  # raises what made the connection fail
    try:
        yield ready.result()
    finally:
        stop.set()
        await task


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with held(build_server(settings)) as c:
        yield c


@pytest.fixture
async def orchestrator(settings: Settings, tmp_path: Path) -> AsyncIterator[Orchestrator]:
    orch = Orchestrator(settings, log_dir=tmp_path / "logs")
    task = asyncio.create_task(orch.run())
    await orch.wait_ready()
    yield orch
    orch.request_stop()
    await task
    await kill_orphan_workers(settings)


async def kill_orphan_workers(settings: Settings) -> None:
    """SIGKILL worker processes of this test still heartbeating after their orchestrator
    stopped (an orchestrator forgets the processes of a pool it closed after the drain limit),
    so none outlives the test; each is matched by its pid and its worker id on the command line.
    """
    redis = connect(settings)
    try:
        async for key in redis.scan_iter(match=f"{settings.key_prefix}worker:*"):
            pid = int(text(await redis.hget(key, "pid")) or 0)
            kill_if_worker(pid, text(key).rsplit(":", 1)[-1])
    finally:
        await redis.aclose()


def kill_if_worker(pid: int, worker_id: str) -> None:
    """SIGKILL `pid` if it is still the process of `worker_id` (a pid can be reused)."""
    with contextlib.suppress(OSError):
        if pid and worker_id.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)


async def ok(client: Client, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Call a tool that must succeed; return its structured content."""
    result: CallToolResult = await client.call_tool(tool, args or {})
    text = " ".join(getattr(c, "text", "") for c in result.content)
    assert not result.is_error, f"{tool} failed: {text}"
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def fails(client: Client, tool: str, args: dict[str, Any] | None = None) -> str:
    """Call a tool that must fail; return the error text the model sees."""
    result = await client.call_tool(tool, args or {})
    assert result.is_error, f"{tool} unexpectedly succeeded: {result.structured_content}"
    return " ".join(getattr(c, "text", "") for c in result.content)


async def fake_pool(
    redis: Redis,
    settings: Settings,
    pool_id: str,
    status: PoolStatus = PoolStatus.RUNNING,
    **spec: Any,
) -> PoolSpec:
    """A pool hash as an orchestrator writes it, with no workers: its tasks stay queued."""
    pool = PoolSpec(id=pool_id, name=pool_id, **spec)
    await redis.hset(
        settings.keys.pool(pool_id),
        mapping=pool_hash_fields(pool, status, created_at=1.0, target_workers=pool.min_workers),
    )
    await redis.sadd(settings.keys.pools, pool_id)
    return pool


# ------------------------------------------------------------------ in-process: no workers


async def test_tools_and_their_parameters(client: Client) -> None:
    listed = (await client.list_tools()).tools
    by_name = {t.name: t for t in listed}
    assert set(by_name) == TOOLS
    params = {n: set(t.input_schema["properties"]) for n, t in by_name.items()}
    assert {"pool_type", "name", "min_workers", "max_workers", "worker_type"} <= params[
        "pool_spawn"
    ]
    assert {"labels", "auto_scale", "concurrency", "functions", "allowed_commands"} <= params[
        "pool_spawn"
    ]
    assert {"pool_id", "prompt", "timeout", "command", "call", "args", "kwargs"} <= params[
        "pool_execute"
    ]
    assert {"prompt", "pool_selector", "timeout", "affinity_key", "labels"} <= params[
        "pool_route_execute"
    ]
    assert {"query", "limit", "pool_ids"} <= params["pool_search_memory"]
    out = by_name["pool_execute"].output_schema or {}
    assert {"pool_id", "worker_id", "status", "output", "error", "duration"} <= set(
        out["properties"]
    )
    assert {"task_id", "attempts", "exit_code"} <= set(out["properties"])
    assert all(t.output_schema for t in listed)


async def test_empty_deployment(client: Client) -> None:
    assert await ok(client, "pool_list") == {"count": 0, "pools": []}
    monitor = await ok(client, "pool_monitor")
    assert monitor["pools"] == [] and monitor["totals"]["pools"] == 0
    health = await ok(client, "pool_health")
    assert health["healthy"] is False  # no orchestrator heartbeat
    assert health["broker"]["ok"] is True and health["pools"] == {}
    letters = await ok(client, "pool_dead_letters")
    assert (letters["total"], letters["entries"]) == (0, [])


async def test_pool_list_and_monitor_read_the_hashes(
    client: Client, redis: Redis, settings: Settings
) -> None:
    await fake_pool(redis, settings, "pa", labels={"gpu": "true"}, min_workers=1, max_workers=3)
    await redis.hset(
        settings.keys.pool_load("pa"),
        mapping={"workers": 2, "capacity": 8, "in_flight": 3, "queued": 1,
                 "completed": 4, "failed": 1, "total_ms": 200.0, "updated_at": 5.0},
    )  # fmt: skip
    listed = await ok(client, "pool_list")
    assert listed["count"] == 1
    pool = listed["pools"][0]
    assert (pool["pool_id"], pool["status"], pool["labels"], pool["workers"]) == (
        "pa",
        "running",
        {"gpu": "true"},
        2,
    )
    monitor = await ok(client, "pool_monitor", {"pool_ids": ["pa"]})
    metrics = monitor["pools"][0]
    assert {k: metrics[k] for k in ("workers", "in_flight", "queued", "completed", "failed")} == {
        "workers": 2,
        "in_flight": 3,
        "queued": 1,
        "completed": 4,
        "failed": 1,
    }
    assert metrics["avg_ms"] == 50.0 and metrics["load"] == 0.5
    assert monitor["totals"]["completed"] == 4
    assert "unknown pool" in await fails(client, "pool_monitor", {"pool_ids": ["pa", "nope"]})


async def test_waits_are_bounded_and_return_the_task_id(
    client: Client, redis: Redis, settings: Settings
) -> None:
    await fake_pool(redis, settings, "idle")
    res = await ok(client, "pool_execute", {"pool_id": "idle", "prompt": "hi", "wait": 0.2})
    assert res["done"] is False and res["status"] == "queued"
    task_id = res["task_id"]
    assert task_id in res["message"] and "task_result" in res["message"]
    assert (await ok(client, "task_status", {"task_id": task_id}))["status"] == "queued"
    polled = await ok(client, "task_result", {"task_id": task_id, "timeout": 0.1})
    assert polled["done"] is False and polled["task_id"] == task_id

    cancel = await ok(client, "task_cancel", {"task_id": task_id})
    assert cancel["previous_status"] == "queued" and cancel["cancelled"] is True
    final = await ok(client, "task_result", {"task_id": task_id, "timeout": 5})
    assert final["status"] == "cancelled" and final["done"] is True
    again = await ok(client, "task_cancel", {"task_id": task_id})
    assert again["cancelled"] is False and "already cancelled" in again["message"]

    routed = await ok(client, "pool_route_execute", {"prompt": "hi", "wait": 0})
    assert routed["done"] is False and routed["status"] == "pending"


async def test_task_submit_direct_and_routed(
    client: Client, redis: Redis, settings: Settings
) -> None:
    await fake_pool(redis, settings, "pa")
    direct = await ok(client, "task_submit", {"pool_id": "pa", "call": "add", "args": [1, 2]})
    assert (direct["status"], direct["routed"], direct["pool_id"]) == ("queued", False, "pa")
    routed = await ok(
        client,
        "task_submit",
        {"prompt": "x", "affinity_key": "repo-1", "labels": ["gpu=true"], "tags": ["t1"]},
    )
    assert (routed["status"], routed["routed"]) == ("pending", True)
    entries = await redis.xrange(settings.keys.ingress)
    msg = decode(entries[-1][1])
    assert isinstance(msg, TaskDelegate)
    assert msg.task.id == routed["task_id"]
    assert (msg.task.strategy, msg.task.affinity_key, msg.task.labels, msg.task.tags) == (
        "affinity",
        "repo-1",
        {"gpu": "true"},
        ["t1"],
    )
    keyed = {"pool_id": "pa", "prompt": "once", "idempotency_key": "k-1"}
    first = await ok(client, "task_submit", keyed)
    assert (await ok(client, "task_submit", keyed))["task_id"] == first["task_id"]


async def test_full_queues_and_unavailable_pools(
    client: Client, redis: Redis, settings: Settings
) -> None:
    await fake_pool(redis, settings, "tiny", max_queue=1)
    await ok(client, "task_submit", {"pool_id": "tiny", "prompt": "1"})
    error = await fails(client, "task_submit", {"pool_id": "tiny", "prompt": "2"})
    assert "queue full" in error and "nothing was queued" in error
    error = await fails(client, "pool_execute", {"pool_id": "tiny", "prompt": "3"})
    assert "queue full" in error

    await fake_pool(redis, settings, "shut", status=PoolStatus.CLOSED)
    error = await fails(client, "pool_execute", {"pool_id": "shut", "prompt": "x"})
    assert "pool unavailable" in error and "closed" in error
    error = await fails(client, "pool_scale", {"pool_id": "shut", "target_workers": 1})
    assert "closed and cannot be scaled" in error


BAD_ARGUMENTS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("pool_execute", {"pool_id": "pa"}, ["exactly one of prompt, command or call", "got none"]),
    ("pool_execute", {"pool_id": "pa", "prompt": "x", "command": ["ls"]}, ["prompt and command"]),
    ("pool_execute", {"pool_id": "pa", "prompt": "x", "args": [1]}, ["args/kwargs"]),
    ("pool_execute", {"pool_id": "pa", "prompt": "x", "timeout": 0}, ["timeout"]),
    ("pool_execute", {"pool_id": "pa", "prompt": "x", "max_attempts": 0}, ["max_attempts"]),
    ("pool_execute", {"pool_id": "pa", "command": ["ls"]}, ["cannot run a command task"]),
    ("pool_execute", {"pool_id": "pa", "prompt": "x", "share_with": ["bad id"]}, ["share_with"]),
    ("pool_route_execute", {"prompt": "x", "pool_selector": "fastest"}, ["pool_selector="]),
    ("pool_route_execute", {"prompt": "x", "labels": ["gpu"]}, ["labels: 'gpu'"]),
    ("pool_route_execute", {"prompt": "x", "pool_selector": "affinity"}, ["affinity_key"]),
    ("task_submit", {"prompt": "x", "pool_id": "pa", "labels": {"a": "b"}}, ["route a task"]),
    ("pool_spawn", {"min_workers": 5, "max_workers": 2}, ["min_workers (5)", "max_workers (2)"]),
    ("pool_spawn", {"pool_type": "bogus"}, ["pool_type", "unknown pool type 'bogus'"]),
    ("pool_spawn", {"worker_type": "shell"}, ["allowed_commands"]),
    ("pool_spawn", {"name": "has space"}, ["pool name"]),
    ("pool_scale", {"pool_id": "pa", "target_workers": 9}, ["workers=9", "[1, 3]"]),
    ("pool_search_memory", {"query": "x", "limit": 0}, ["limit=0"]),
    ("pool_dead_letters", {"action": "requeue"}, ["entry_id"]),
    ("pool_dead_letters", {"action": "purge"}, ["action"]),
    ("pool_dead_letters", {"action": "requeue", "entry_id": "abc"}, ["not a stream entry id"]),
    ("pool_dead_letters", {"entry_id": "1-0"}, ["only used with action='requeue'"]),
    ("task_result", {"task_id": "t-1", "timeout": -1}, ["timeout"]),
]


@pytest.mark.parametrize(("tool", "args", "expected"), BAD_ARGUMENTS)
async def test_bad_arguments_name_the_argument(
    client: Client,
    redis: Redis,
    settings: Settings,
    tool: str,
    args: dict[str, Any],
    expected: list[str],
) -> None:
    await fake_pool(redis, settings, "pa", min_workers=1, max_workers=3)
    error = await fails(client, tool, args)
    for part in expected:
        assert part in error


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("pool_execute", {"pool_id": "nope", "prompt": "x"}),
        ("task_submit", {"pool_id": "nope", "prompt": "x"}),
        ("pool_scale", {"pool_id": "nope", "target_workers": 1}),
        ("pool_close", {"pool_id": "nope"}),
        ("pool_monitor", {"pool_ids": ["nope"]}),
        ("pool_search_memory", {"query": "x", "pool_ids": ["nope"]}),
    ],
)
async def test_unknown_pools(client: Client, tool: str, args: dict[str, Any]) -> None:
    error = await fails(client, tool, args)
    assert "unknown pool" in error and "nope" in error


@pytest.mark.parametrize("tool", ["task_status", "task_result", "task_cancel"])
async def test_unknown_tasks(client: Client, tool: str) -> None:
    error = await fails(client, tool, {"task_id": "t-nope"})
    assert "unknown task" in error and "t-nope" in error


async def test_spawn_without_an_orchestrator(client: Client) -> None:
    error = await fails(client, "pool_spawn", {"name": "lonely", "timeout": 0.3})
    assert "no orchestrator" in error and "mahavishnu orchestrator" in error
    asked = await ok(
        client, "pool_spawn", {"name": "later", "pool_type": "session-buddy", "wait": False}
    )
    assert (asked["status"], asked["pool_type"], asked["name"]) == (
        "requested",
        "delegated",
        "later",
    )


async def test_unreachable_redis_is_reported() -> None:
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", key_prefix="test-x:")
    async with Client(build_server(settings)) as c:
        error = await fails(c, "pool_list")
    assert "Redis at redis://127.0.0.1:" in error and "not reachable" in error


async def test_memory_search_tool(client: Client, redis: Redis, settings: Settings) -> None:
    await fake_pool(redis, settings, "pa")
    for n, prompt in enumerate(["deploy the web app", "write api tests", "fix api bug"]):
        await redis.xadd(
            settings.keys.pool_memory("pa"),
            {"task": f"t-{n}", "pool": "pa", "worker": "w", "status": "completed",
             "prompt": prompt, "output": "ok", "error": "", "duration": "0.1",
             "finished_at": repr(100.0 + n), "tags": "demo"},
        )  # fmt: skip
    found = await ok(client, "pool_search_memory", {"query": "api tests", "limit": 5})
    assert [h["task_id"] for h in found["hits"]] == ["t-1", "t-2"]
    assert found["hits"][0]["score"] > found["hits"][1]["score"]
    assert (found["count"], found["pool_ids"], found["scanned"]) == (2, ["pa"], 3)
    assert found["hits"][0]["tags"] == ["demo"]
    recent = await ok(client, "pool_search_memory", {"query": "", "limit": 1})
    assert [h["task_id"] for h in recent["hits"]] == ["t-2"]


async def test_dead_letters_list_and_requeue(
    client: Client, redis: Redis, settings: Settings
) -> None:
    await fake_pool(redis, settings, "pa")
    await fake_pool(redis, settings, "pb")
    direct = TaskSpec(id="t-direct", prompt="again", pool_id="pa", idempotency_key="orig")
    routed = TaskSpec(id="t-routed", prompt="route me")
    pipe = redis.pipeline(transaction=False)
    queue_dead_letter(pipe, settings, dead_letter_record(task_id="t-bare", pool_id="pa", reason="ran out", attempts=3, history=["attempt 1: x", "attempt 2: y"]))  # fmt: skip
    queue_dead_letter(pipe, settings, dead_letter_record(task_id="t-bad", pool_id="pa", reason="malformed", raw={b"type": b"TASK_DELEGATE", b"body": b"\xc1garbage"}))  # fmt: skip
    msg = TaskDelegate(task=direct, attempt=3, history=["attempt 1: boom"])
    queue_dead_letter(
        pipe,
        settings,
        dead_letter_record(task_id=direct.id, pool_id="pa", reason="boom", raw=dict(encode(msg))),
    )
    # the `spec` field (the task's JSON) that a dead letter of a readable task should carry
    fields = {"task": routed.id, "pool": "pa", "reason": "boom", "spec": routed.model_dump_json()}
    pipe.xadd(settings.keys.dlq, fields)
    await pipe.execute()

    listed = await ok(client, "pool_dead_letters")
    assert listed["total"] == 4
    entries = {e["task_id"]: e for e in listed["entries"]}
    assert [e["task_id"] for e in listed["entries"]] == ["t-routed", "t-direct", "t-bad", "t-bare"]
    assert entries["t-bare"]["requeueable"] is False
    assert "only the task id" in entries["t-bare"]["requeue_problem"]
    assert entries["t-bad"]["requeueable"] is False
    assert "cannot be decoded" in entries["t-bad"]["requeue_problem"]
    assert entries["t-direct"]["requeueable"] is True
    assert entries["t-direct"]["history"] == ["attempt 1: boom"]
    assert entries["t-bare"]["attempts"] == 3 and entries["t-bare"]["reason"] == "ran out"
    assert entries["t-bare"]["history"] == ["attempt 1: x", "attempt 2: y"]
    assert len((await ok(client, "pool_dead_letters", {"limit": 1}))["entries"]) == 1
    other = await ok(client, "pool_dead_letters", {"pool_id": "pb"})
    assert other["entries"] == [] and other["total"] == 4

    for task_id, why in (("t-bare", "only the task id"), ("t-bad", "cannot be decoded")):
        args = {"action": "requeue", "entry_id": entries[task_id]["entry_id"]}
        error = await fails(client, "pool_dead_letters", args)
        assert "cannot be requeued" in error and why in error

    args = {"action": "requeue", "entry_id": entries["t-direct"]["entry_id"]}
    done = await ok(client, "pool_dead_letters", args)
    new_id = done["requeued_task_id"]
    assert new_id and new_id != "t-direct" and done["total"] == 3
    assert "pool pa" in done["message"]
    status = await ok(client, "task_status", {"task_id": new_id})
    assert (status["status"], status["pool_id"]) == ("queued", "pa")
    assert "no such dead letter" in await fails(client, "pool_dead_letters", args)

    args = {"action": "requeue", "entry_id": entries["t-routed"]["entry_id"], "pool_id": "pb"}
    moved = await ok(client, "pool_dead_letters", args)
    assert "pool pb" in moved["message"]
    status = await ok(client, "task_status", {"task_id": moved["requeued_task_id"]})
    assert status["pool_id"] == "pb"


# ------------------------------------------------------------------ in-process: real workers


async def test_pools_and_tasks_on_real_workers(client: Client, orchestrator: Orchestrator) -> None:
    spawned = await ok(
        client,
        "pool_spawn",
        {"pool_type": "mahavishnu", "name": "demo", "min_workers": 1, "max_workers": 2,
         "labels": {"team": "a"}, "concurrency": 2},
    )  # fmt: skip
    pool_id = spawned["pool_id"]
    assert (spawned["status"], spawned["pool_type"], spawned["worker_type"]) == (
        "running",
        "local",
        "python",
    )
    listed = await ok(client, "pool_list")
    assert [p["pool_id"] for p in listed["pools"]] == [pool_id]

    res = await ok(client, "pool_execute", {"pool_id": pool_id, "prompt": "hello facade"})
    assert (res["status"], res["output"], res["done"], res["attempts"]) == (
        "completed",
        "hello facade",
        True,
        1,
    )
    assert res["pool_id"] == pool_id and res["worker_id"] and res["duration"] >= 0
    added = await ok(client, "pool_execute", {"pool_id": pool_id, "call": "add", "args": [2, 3]})
    assert added["output"] == 5
    routed = await ok(
        client,
        "pool_route_execute",
        {"prompt": "routed hello", "labels": {"team": "a"}, "affinity_key": "k1", "timeout": 30},
    )
    assert (routed["status"], routed["pool_id"]) == ("completed", pool_id)
    nowhere = await ok(
        client,
        "pool_route_execute",
        {"prompt": "x", "labels": ["team=b"], "queue_timeout": 0.5, "timeout": 20},
    )
    assert nowhere["status"] == "failed" and "lacks label team=b" in (nowhere["error"] or "")

    found = await ok(client, "pool_search_memory", {"query": "hello"})
    assert {h["prompt"] for h in found["hits"]} == {"hello facade", "routed hello"}
    health = await ok(client, "pool_health")
    assert health["pools"][pool_id]["healthy"] is True
    assert health["pools"][pool_id]["live_workers"] >= 1

    scaled = await ok(client, "pool_scale", {"pool_id": pool_id, "target_workers": 2, "wait": True})
    assert (scaled["target_workers"], scaled["previous_target"], scaled["status"]) == (
        2,
        1,
        "running",
    )
    monitor = await ok(client, "pool_monitor")
    assert monitor["pools"][0]["completed"] >= 3
    assert monitor["pools"][0]["target_workers"] == 2

    closed = await ok(client, "pool_close", {"pool_id": pool_id})
    assert closed == {"pool_id": pool_id, "status": "closed", "closed": True, "message": "closed"}
    assert (await ok(client, "pool_list"))["count"] == 0


async def test_failures_dead_letters_and_cancel_on_real_workers(
    client: Client, orchestrator: Orchestrator
) -> None:
    error = await fails(
        client, "pool_spawn", {"name": "broken", "functions": {"f": "no_such_module_xyz:f"}}
    )
    assert "pool unavailable" in error and "no_such_module_xyz" in error

    pool_id = (await ok(client, "pool_spawn", {"name": "work", "min_workers": 1}))["pool_id"]
    dead = await ok(
        client,
        "pool_execute",
        {"pool_id": pool_id, "call": "fail", "args": ["boom"], "max_attempts": 1},
    )
    assert dead["status"] == "dead_lettered" and dead["done"] is True
    assert "boom" in (dead["error"] or "") and "pool_dead_letters" in dead["message"]
    letters = await ok(client, "pool_dead_letters", {"pool_id": pool_id})
    entry = next(e for e in letters["entries"] if e["task_id"] == dead["task_id"])
    assert "boom" in entry["reason"]
    args = {"action": "requeue", "entry_id": entry["entry_id"]}
    if entry["requeueable"]:
        again = await ok(client, "pool_dead_letters", args)
        result = await ok(client, "task_result", {"task_id": again["requeued_task_id"]})
        assert result["status"] == "dead_lettered"
    else:
        assert entry["requeue_problem"]
        assert "cannot be requeued" in await fails(client, "pool_dead_letters", args)

    slow = await ok(
        client, "pool_execute", {"pool_id": pool_id, "call": "sleep", "args": [60], "wait": 0}
    )
    assert slow["done"] is False
    cancel = await ok(client, "task_cancel", {"task_id": slow["task_id"]})
    assert cancel["cancelled"] is True
    final = await ok(client, "task_result", {"task_id": slow["task_id"], "timeout": 30})
    assert final["status"] == "cancelled"

    submitted = await ok(client, "task_submit", {"prompt": "later", "pool_id": pool_id})
    result = await ok(client, "task_result", {"task_id": submitted["task_id"], "timeout": 30})
    assert (result["status"], result["output"]) == ("completed", "later")

    closed = await ok(client, "pool_close_all")
    assert closed["count"] == 1 and closed["pools"][0]["closed"] is True


# ------------------------------------------------------------------ transports


def facade_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a facade process: this test's Redis prefix plus `extra` settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAHAVISHNU_")}
    env.update(
        {"MAHAVISHNU_KEY_PREFIX": settings.key_prefix, "MAHAVISHNU_REDIS_URL": settings.redis_url}
    )
    env.update({f"MAHAVISHNU_{k.upper()}": v for k, v in extra.items()})
    return env


async def test_stdio_transport(settings: Settings, redis: Redis) -> None:
    await fake_pool(redis, settings, "pa")
    params = StdioServerParameters(
        command=sys.executable,
        args=["-c", "from orchestrator.mcp.server import run_mcp; run_mcp(http=False)"],
        env=facade_env(settings),
        cwd=str(REPO),
    )
    async with Client(params) as c:
        assert {t.name for t in (await c.list_tools()).tools} == TOOLS
        listed = await ok(c, "pool_list")
        assert [p["pool_id"] for p in listed["pools"]] == ["pa"]


def tail(log: Path) -> str:
    """The end of a process log, for assertion messages."""
    return log.read_text(errors="replace")[-2000:]


@contextlib.asynccontextmanager
async def facade_process(settings: Settings, log: Path, **extra: str) -> AsyncIterator[str]:
    """A facade on streamable HTTP in its own process; yields its base URL once it answers."""
    port = free_port()
    code = (
        "from orchestrator.mcp.server import run_mcp; "
        f"run_mcp(http=True, host='127.0.0.1', port={port})"
    )
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, cwd=REPO, env=facade_env(settings, **extra),
            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(300):  # bounded: only until the port answers
                if proc.returncode is not None:
                    raise AssertionError(f"facade exited: {tail(log)}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"{base}/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"facade did not answer: {tail(log)}")
        yield base
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_http_end_to_end_with_auth(
    settings: Settings, orchestrator: Orchestrator, tmp_path: Path
) -> None:
    extra = {"mcp_http_token": TOKEN, "mcp_allowed_hosts": json.dumps(["mcp.example.svc:*"])}
    async with facade_process(settings, tmp_path / "facade.log", **extra) as base:
        url = f"{base}/mcp"
        probe = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        headers = {"accept": "application/json, text/event-stream"}
        async with httpx.AsyncClient() as http:
            for auth in (None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x"):
                sent = dict(headers, authorization=auth) if auth else headers
                refused = await http.post(url, json=probe, headers=sent)
                assert refused.status_code == 401, auth
                assert refused.headers["www-authenticate"].startswith("Bearer")
                assert refused.json()["error"] == "invalid_token"
            good = dict(headers, authorization=f"Bearer {TOKEN}")
            port = base.rsplit(":", 1)[1]
            evil = await http.post(url, json=probe, headers=dict(good, host=f"evil.example:{port}"))
            assert evil.status_code == 421
            allowed = await http.post(
                url, json=probe, headers=dict(good, host=f"mcp.example.svc:{port}")
            )
            assert allowed.status_code not in (401, 421)
        assert await _no_task_touched(settings)

        async with httpx2.AsyncClient(headers={"authorization": "Bearer not-the-token"}) as wrong:
            with pytest.raises(ExceptionGroup) as refused_by_sdk:
                async with Client(streamable_http_client(url, http_client=wrong)) as c:
                    await c.list_tools()
            assert refused_by_sdk.group_contains(MCPError)

        async with (
            httpx2.AsyncClient(
                headers={"authorization": f"Bearer {TOKEN}"}, timeout=httpx2.Timeout(60.0)
            ) as http_client,
            Client(streamable_http_client(url, http_client=http_client)) as c,
        ):
            spec = {"pool_type": "mahavishnu", "name": "http", "min_workers": 1}
            spawned = await ok(c, "pool_spawn", spec)
            res = await ok(
                c, "pool_execute", {"pool_id": spawned["pool_id"], "prompt": "over http"}
            )
            assert (res["status"], res["output"], res["pool_id"]) == (
                "completed",
                "over http",
                spawned["pool_id"],
            )
            assert res["worker_id"] and res["task_id"]
            assert (await ok(c, "pool_close", {"pool_id": spawned["pool_id"]}))["closed"]


async def _no_task_touched(settings: Settings) -> bool:
    redis = connect(settings)
    try:
        return not [k async for k in redis.scan_iter(match=settings.keys.task("*"))]
    finally:
        await redis.aclose()


# ------------------------------------------------------------------ auth and host checks


def test_token_rules() -> None:
    with pytest.raises(ConfigError, match="MAHAVISHNU_MCP_HTTP_TOKEN"):
        check_token(None, require_auth=True, host="127.0.0.1")
    with pytest.raises(ConfigError, match="too short"):
        check_token("short", require_auth=True, host="127.0.0.1")
    with pytest.raises(ConfigError, match="loopback"):
        check_token(None, require_auth=False, host="0.0.0.0")
    assert check_token(None, require_auth=False, host="localhost") is None
    assert check_token(TOKEN, require_auth=True, host="0.0.0.0") == TOKEN
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "[::1]", "localhost", "0.0.0.0")] == [
        True,
        True,
        True,
        True,
        False,
    ]


def test_run_mcp_refuses_unsafe_http_before_starting() -> None:
    with pytest.raises(ConfigError, match="needs a bearer token"):
        run_mcp(Settings(), http=True, host="127.0.0.1", port=free_port())
    with pytest.raises(ConfigError, match="loopback"):
        run_mcp(Settings(), http=True, host="0.0.0.0", port=free_port(), require_auth=False)


def test_host_checks() -> None:
    local = transport_security("127.0.0.1", [])
    assert local.enable_dns_rebinding_protection and "localhost:*" in local.allowed_hosts
    svc = transport_security("0.0.0.0", ["mhv-mcp.default.svc:*"])
    assert "mhv-mcp.default.svc:*" in svc.allowed_hosts
    assert "http://mhv-mcp.default.svc:*" in svc.allowed_origins
    bare = transport_security("0.0.0.0", ["mhv-mcp"])
    assert {"mhv-mcp", "mhv-mcp:*"} <= set(bare.allowed_hosts)
    assert not transport_security("0.0.0.0", []).enable_dns_rebinding_protection
    assert not transport_security("127.0.0.1", ["*"]).enable_dns_rebinding_protection


async def test_bearer_middleware_touches_nothing_without_the_token(settings: Settings) -> None:
    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guarded = BearerAuth(app, TOKEN)
    transport = httpx.ASGITransport(app=guarded)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.post("/mcp")).status_code == 401
        assert (await http.post("/mcp", headers={"authorization": "Bearer no"})).status_code == 401
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert reached == []
        ok_auth = {"authorization": f"bearer {TOKEN}"}
        assert (await http.post("/mcp", headers=ok_auth)).status_code == 204
        assert reached == ["/mcp"]
    open_app = http_app(build_server(settings), settings, host="127.0.0.1", require_auth=False)
    assert isinstance(open_app, BearerAuth)


async def test_pool_code_over_mcp_needs_the_operators_consent(settings: Settings) -> None:
    locked = settings.model_copy(update={"mcp_allow_pool_code": False})
    async with held(build_server(locked)) as locked_client:
        error = await fails(
            locked_client, "pool_spawn", {"name": "x", "functions": {"f": "os:getcwd"}}
        )
    assert "functions" in error and "mcp_allow_pool_code" in error
