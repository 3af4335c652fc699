"""What the MCP facade accepts and how it says no: unknown arguments, parameter descriptions,
dead-letter messages, the HTTP body limit and oversized prompts, over the SDK's real client
(in-process, stdio and streamable HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
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

from orchestrator.mcp.http import MAX_BODY_BYTES, BodyLimit, body_too_large
from orchestrator.mcp.models import ExecuteResult
from orchestrator.mcp.params import PROMPT_LIMIT
from orchestrator.mcp.server import build_server
from orchestrator.mcp.support import unknown_arguments
from shared.config import Settings
from shared.connection import Redis, connect
from shared.models import MAX_PROMPT_CHARS, TaskResult, TaskStatus
from tests.test_mcp_server import (
    REPO,
    TOKEN,
    facade_env,
    facade_process,
    fails,
    fake_pool,
    held,
    ok,
)

pytestmark = pytest.mark.integration

SPAWN_FIELDS = ("min_workers", "max_workers", "auto_scale", "inbox_max")


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with held(build_server(settings)) as c:
        yield c


async def keys_under(settings: Settings) -> list[bytes]:
    redis: Redis = connect(settings)
    try:
        return [k async for k in redis.scan_iter(match=f"{settings.key_prefix}*")]
    finally:
        await redis.aclose()


# ------------------------------------------------------------------ unknown arguments


def misspelt(name: str) -> str:
    """A near miss of `name`, as a model might type it."""
    return name[:-1] if len(name) > 3 else name + "x"


async def test_every_tool_is_closed_to_unknown_arguments(
    client: Client, settings: Settings
) -> None:
    tools = (await client.list_tools()).tools
    assert len(tools) == 15
    for tool in tools:
        schema = tool.input_schema
        assert schema.get("additionalProperties") is False, tool.name
        params = list(schema.get("properties", {}))
        wrong = misspelt(params[0]) if params else "pool_id"
        error = await fails(client, tool.name, {wrong: 1})
        assert f"unknown argument {wrong!r}" in error, (tool.name, error)
        if params:
            assert f"did you mean {params[0]!r}?" in error, (tool.name, error)
        else:
            assert f"{tool.name} takes no arguments" in error
    assert await keys_under(settings) == []  # no call touched anything


@pytest.mark.parametrize(
    ("tool", "args", "wrong", "meant"),
    [
        ("pool_spawn", {"min_worker": 3}, "min_worker", "min_workers"),
        ("task_submit", {"pool": "p-1", "prompt": "x"}, "pool", "pool_id"),
        ("pool_execute", {"pool_id": "p-1", "prompt": "x", "timout": 5}, "timout", "timeout"),
    ],
)
async def test_the_trial_users_misspellings_are_refused(
    client: Client, settings: Settings, tool: str, args: dict[str, Any], wrong: str, meant: str
) -> None:
    error = await fails(client, tool, args)
    assert f"unknown argument {wrong!r} (did you mean {meant!r}?)" in error
    assert await keys_under(settings) == []  # nothing spawned, queued or routed elsewhere


async def test_each_unknown_argument_is_named(client: Client) -> None:
    error = await fails(
        client, "task_result", {"task_id": "t-1", "timeot": 1, "zzzz_qqq": 2, "x" * 500: 3}
    )
    assert "unknown argument 'timeot' (did you mean 'timeout'?)" in error
    assert "unknown argument 'zzzz_qqq' (valid arguments: task_id, timeout)" in error
    assert "x" * 200 not in error  # a huge name is shortened


def test_unknown_arguments_message() -> None:
    assert unknown_arguments("t", {"a": 1}, ["a", "b"]) is None
    assert unknown_arguments("t", {"c": 1}, []) == "unknown argument 'c' (t takes no arguments)"


async def test_every_parameter_has_a_description(client: Client) -> None:
    for tool in (await client.list_tools()).tools:
        for name, prop in tool.input_schema.get("properties", {}).items():
            assert prop.get("description"), f"{tool.name}.{name} has no description"
    spawn = next(t for t in (await client.list_tools()).tools if t.name == "pool_spawn")
    assert set(SPAWN_FIELDS) <= set(spawn.input_schema["properties"])


# ------------------------------------------------------------------ dead-letter messages


async def test_a_dead_letter_says_its_reason_once(client: Client, orchestrator: Any) -> None:
    pool_id = (await ok(client, "pool_spawn", {"name": "dl", "min_workers": 1}))["pool_id"]
    dead = await ok(
        client,
        "pool_execute",
        {"pool_id": pool_id, "call": "fail", "args": ["boom"], "max_attempts": 1},
    )
    assert dead["status"] == "dead_lettered"
    error, message = dead["error"] or "", dead["message"]
    assert error.startswith("dead-lettered after 1 attempt(s)") and "boom" in error
    assert message == f"{error}; see pool_dead_letters"
    assert message.count("dead-lettered") == 1 and message.count("attempt(s)") == 1
    await ok(client, "pool_close", {"pool_id": pool_id})


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            "dead-lettered after 2 attempt(s); last: worker w-1 died",
            "dead-lettered after 2 attempt(s); last: worker w-1 died; see pool_dead_letters",
        ),
        ("inbox full", "dead-lettered after 2 attempt(s): inbox full; see pool_dead_letters"),
        (None, "dead-lettered after 2 attempt(s): no reason given; see pool_dead_letters"),
    ],
)
def test_dead_letter_messages_from_every_writer(error: str | None, message: str) -> None:
    result = TaskResult(task_id="t", status=TaskStatus.DEAD_LETTERED, error=error, attempts=2)
    assert ExecuteResult.from_result(result).message == message


# ------------------------------------------------------------------ body limit and prompt size


def tool_text(result: Any) -> str:
    assert result.is_error
    return " ".join(getattr(c, "text", "") for c in result.content)


async def test_an_oversized_prompt_reads_the_same_on_stdio_and_http(
    settings: Settings, tmp_path: Path
) -> None:
    over = {"prompt": "x" * (MAX_PROMPT_CHARS + 1)}  # fits the HTTP body, not a task
    huge = {"prompt": "x" * (MAX_BODY_BYTES + 1)}  # does not fit the HTTP body either
    params = StdioServerParameters(
        command=sys.executable,
        args=["-c", "from orchestrator.mcp.server import run_mcp; run_mcp(http=False)"],
        env=facade_env(settings),
        cwd=str(REPO),
    )
    async with Client(params) as c:
        stdio_over = tool_text(await c.call_tool("task_submit", over))
        stdio_huge = tool_text(await c.call_tool("task_submit", huge))
    assert f"prompt has {MAX_PROMPT_CHARS + 1:,} characters; {PROMPT_LIMIT}" in stdio_over
    assert f"prompt has {MAX_BODY_BYTES + 1:,} characters; {PROMPT_LIMIT}" in stdio_huge

    async with (
        facade_process(settings, tmp_path / "facade.log", mcp_http_token=TOKEN) as base,
        httpx2.AsyncClient(headers={"authorization": f"Bearer {TOKEN}"}) as http_client,
        Client(streamable_http_client(f"{base}/mcp", http_client=http_client)) as c,
    ):
        assert tool_text(await c.call_tool("task_submit", over)) == stdio_over
        with pytest.raises(MCPError) as refused:
            await c.call_tool("task_submit", huge)
        assert "exceeds the 4 MiB limit of this MCP facade" in str(refused.value)
        assert PROMPT_LIMIT in str(refused.value)
        assert (await c.list_tools()).tools  # the session goes on

        async with httpx.AsyncClient() as raw:
            body = b'{"jsonrpc": "2.0", "id": 7, "method": "tools/list", "pad": "' + b"x" * (
                MAX_BODY_BYTES
            )
            answer = await raw.post(
                f"{base}/mcp",
                content=body,
                headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/json"},
            )
        assert answer.status_code == 413
        assert answer.json()["error"]["message"] == body_too_large(len(body))
        assert f"request body of {len(body):,} bytes exceeds the 4 MiB limit" in answer.text
    assert await keys_under(settings) == []


async def test_body_limit_middleware_counts_chunked_bodies() -> None:
    seen: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.append(body)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def chunks(n: int) -> AsyncIterator[bytes]:
        for _ in range(n):
            yield b"0123456789"

    transport = httpx.ASGITransport(app=BodyLimit(app, limit=100))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.post("/mcp", content=chunks(10))).status_code == 204
        refused = await http.post("/mcp", content=chunks(11))
        declared = await http.post("/mcp", content=b"y" * 101)
    assert seen == [b"0123456789" * 10]
    assert refused.status_code == 413
    assert refused.json()["error"]["message"].startswith(
        "request body of more than 100 bytes exceeds the 100-byte limit"
    )
    assert declared.status_code == 413 and refused.json()["id"] is None
    assert declared.json()["error"]["message"] == body_too_large(101, 100)


# ------------------------------------------------------------------ a Redis that does not answer


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never answers (a paused Redis)."""
    held_open: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held_open.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held_open:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_redis_that_does_not_answer_is_reported_with_its_bound() -> None:
    async with silent_server() as port:
        settings = Settings(
            redis_url=f"redis://mhv:s3cret@127.0.0.1:{port}/0",
            key_prefix="test-silent:",
            redis_command_timeout=0.3,
        )
        async with Client(build_server(settings)) as c:
            error = await fails(c, "pool_list")
    assert f"Redis at redis://mhv:***@127.0.0.1:{port}/0 did not answer within 0.3 s" in error
    assert "s3cret" not in error


# ------------------------------------------------------------------ no orchestrator running


async def test_a_wait_without_an_orchestrator_answers_done_false(
    client: Client, redis: Redis, settings: Settings
) -> None:
    await fake_pool(redis, settings, "idle")  # a pool hash without workers or orchestrator
    direct = await ok(client, "pool_execute", {"pool_id": "idle", "prompt": "hi", "wait": 30})
    routed = await ok(client, "pool_route_execute", {"prompt": "hi", "wait": 30})
    for res, status in ((direct, "queued"), (routed, "pending")):
        assert (res["done"], res["status"]) == (False, status)
        assert res["message"].startswith("no orchestrator is running")
        assert f"poll task_result with task_id={res['task_id']!r}" in res["message"]
    error = await fails(client, "pool_spawn", {"name": "lonely", "timeout": 0.3})
    assert error.count("no orchestrator") == 1 and "mahavishnu orchestrator" in error
