"""Live progress end to end: a real orchestrator and worker process run a terminal-claude pool
whose CLI is `tests/fake_claude.py` (Claude Code's stream-json event shapes, paused on a gate
the test opens once it has seen the first chunk). The MCP SDK client receives the progress
notifications in order; `task result --follow` prints the output in order; `--json` stays
JSON."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from orchestrator.mcp.server import build_server
from shared.client import PoolManager
from shared.config import Settings
from tests.conftest import CLI
from tests.test_mcp_server import TOKEN, facade_process

FAKE_CLAUDE = str(Path(__file__).with_name("fake_claude.py"))
FIRST = "Looking at: the repo"
OUTPUT = f"{FIRST}\n[tool: Bash]\nDone: two files.\n"
WAIT = 60.0


class Gate:
    """A unix socket the fake CLI connects to after its first chunk, then waits on."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.waiting: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def _arrived(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.waiting.put(writer)

    async def open_next(self) -> None:
        """Let the next CLI waiting at the gate go on."""
        writer = await asyncio.wait_for(self.waiting.get(), WAIT)
        writer.write(b"go\n")
        await writer.drain()
        writer.close()


@pytest.fixture
async def gate() -> AsyncIterator[Gate]:
    path = f"/tmp/mhv-gate-{os.getpid()}-{id(object())}.sock"
    found = Gate(path)
    server = await asyncio.start_unix_server(found._arrived, path=path)
    yield found
    server.close()
    with contextlib.suppress(OSError):
        os.unlink(path)


async def claude_pool(manager: PoolManager, gate: Gate) -> str:
    return await manager.spawn_pool(
        "local",
        name="claude",
        worker_type="terminal-claude",
        min_workers=1,
        command_template=[sys.executable, FAKE_CLAUDE, "{prompt}"],
        options={"cli_env": {"FAKE_CLAUDE_GATE": gate.path}},
        timeout=WAIT,
    )


def check_order(kinds: list[str]) -> None:
    """queued, running, output, the end."""
    assert kinds[-1] == "completed", kinds
    steps = [k for k in kinds[:-1] if k != "output"]
    assert steps == ["queued", "running"], kinds
    assert kinds.index("output") > kinds.index("running"), kinds
    assert all(k == "output" for k in kinds[kinds.index("output") : -1]), kinds


async def execute_with_progress(
    client: Client, pool_id: str, gate: Gate
) -> tuple[dict[str, Any], list[tuple[float, str]]]:
    """pool_execute with a progress callback; the CLI goes on once its first chunk came."""
    seen: list[tuple[float, str]] = []
    first_chunk = asyncio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, message or ""))
        if message and message.startswith(FIRST):
            first_chunk.set()

    call = asyncio.create_task(
        client.call_tool(
            "pool_execute",
            {"pool_id": pool_id, "prompt": "the repo", "timeout": WAIT},
            progress_callback=on_progress,
        )
    )
    await asyncio.wait_for(first_chunk.wait(), WAIT)
    assert not call.done()  # the chunk came while the CLI was still running
    await gate.open_next()
    result = await asyncio.wait_for(call, WAIT)
    assert not result.is_error and isinstance(result.structured_content, dict)
    return result.structured_content, seen


def check_notifications(seen: list[tuple[float, str]], pool_id: str) -> None:
    progress = [p for p, _ in seen]
    assert progress == sorted(set(progress)), seen
    messages = [m for _, m in seen]

    def kind(message: str) -> str:
        for word in ("queued", "running", "completed"):
            if message.startswith(word):
                return word
        return "output"

    check_order([kind(m) for m in messages])
    assert "".join(m for m in messages if kind(m) == "output") == OUTPUT
    assert messages[0] == f"queued on pool {pool_id}"


async def test_mcp_progress_notifications_in_order(
    settings: Settings, orchestrator: Any, manager: PoolManager, gate: Gate
) -> None:
    pool_id = await claude_pool(manager, gate)
    async with Client(build_server(settings)) as client:
        assert client.server_capabilities.logging is None  # no logging/setLevel: not declared
        result, seen = await execute_with_progress(client, pool_id, gate)
        plain = await client.call_tool(  # no progress token: no notifications, same answer
            "task_result", {"task_id": result["task_id"], "timeout": 5}
        )
    assert result["status"] == "completed" and result["output"] == "Done: two files."
    assert isinstance(plain.structured_content, dict)
    assert plain.structured_content["status"] == "completed"
    check_notifications(seen, pool_id)


async def test_mcp_progress_over_http(
    settings: Settings, orchestrator: Any, manager: PoolManager, gate: Gate, tmp_path: Path
) -> None:
    pool_id = await claude_pool(manager, gate)
    async with facade_process(settings, tmp_path / "facade.log", mcp_http_token=TOKEN) as base:
        headers = {"authorization": f"Bearer {TOKEN}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(WAIT)) as http,
            Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client,
        ):
            result, seen = await execute_with_progress(client, pool_id, gate)
    assert result["status"] == "completed"
    check_notifications(seen, pool_id)


async def read_lines(stream: asyncio.StreamReader, lines: list[str], until: str) -> None:
    while line := (await stream.readline()).decode():
        lines.append(line)
        if until in line:
            return


@pytest.mark.parametrize("json_out", [False, True], ids=["text", "json"])
async def test_task_result_follow_prints_output_in_order(
    settings: Settings, orchestrator: Any, manager: PoolManager, gate: Gate, json_out: bool
) -> None:
    pool_id = await claude_pool(manager, gate)
    task_id = await manager.submit({"prompt": "the repo", "timeout": WAIT}, pool_id=pool_id)
    args = ["task", "result", task_id, "--follow", *(["--json"] if json_out else [])]
    proc = await asyncio.create_subprocess_exec(
        CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    try:
        await asyncio.wait_for(read_lines(proc.stdout, lines, FIRST), WAIT)
        await gate.open_next()
        rest, err = await asyncio.wait_for(proc.communicate(), WAIT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out = "".join(lines) + rest.decode()
    assert proc.returncode == 0, err.decode()
    if not json_out:
        assert out == OUTPUT
        assert "running" in err.decode() and "completed" in err.decode()
        return
    docs = [json.loads(line) for line in out.splitlines()]  # every line is JSON
    kinds = [d["kind"] for d in docs]
    assert kinds[-1] == "result" and docs[-1]["status"] == "completed"
    check_order([*kinds[:-1], "completed"])
    assert "".join(d["text"] for d in docs if d["kind"] == "output") == OUTPUT
    assert docs[kinds.index("running")]["pool_id"] == pool_id


async def test_pool_exec_follow_streams_a_shell_command(
    settings: Settings, orchestrator: Any, manager: PoolManager
) -> None:
    pool_id = await manager.spawn_pool(
        "local", name="sh", worker_type="shell", allowed_commands=["printf"], min_workers=1
    )
    args = ["pool", "exec", pool_id, "--follow", "--json", "--command", "--", "printf", "a\\nb"]
    proc = await asyncio.create_subprocess_exec(
        CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 0, err.decode()
    docs = [json.loads(line) for line in out.decode().splitlines()]
    # the output came live, before the result, written by the worker ahead of the result
    assert "".join(d["text"] for d in docs if d["kind"] == "output") == "a\nb"
    assert docs[-1]["kind"] == "result" and docs[-1]["output"] == "a\nb"


async def test_mcp_progress_of_a_routed_task(
    settings: Settings, orchestrator: Any, manager: PoolManager
) -> None:
    pool_id = await manager.spawn_pool("local", name="py", min_workers=1)
    seen: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(message or "")

    async with Client(build_server(settings)) as client:
        result = await client.call_tool(
            "pool_route_execute",
            {"call": "sleep", "args": [0.3], "timeout": WAIT},
            progress_callback=on_progress,
        )
    assert isinstance(result.structured_content, dict), result
    worker = result.structured_content["worker_id"]
    assert seen == [
        "queued for routing",
        f"routed to pool {pool_id}",
        f"running on {worker} (attempt 1)",
        "completed",
    ]
