"""The outbound MCP client (orchestrator/mcp/client.py) against a real counterpart: this
project's own MCP facade in its own process on streamable HTTP, with a bearer token, on the
standalone Redis and on the cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.broker import free_port
from orchestrator.mcp.client import RemoteMCP
from shared.config import Settings
from shared.errors import RemoteToolError, RemoteUnavailable
from tests.test_mcp_server import TOKEN, TOOLS, facade_process, fake_pool


async def test_tools_are_listed_and_called_with_structured_results(
    settings: Settings, redis: Any, tmp_path: Path
) -> None:
    await fake_pool(redis, settings, "pa")
    async with (
        facade_process(settings, tmp_path / "facade.log", mcp_http_token=TOKEN) as base,
        RemoteMCP(f"{base}/mcp", token=TOKEN) as remote,
    ):
        assert await remote.tool_names() == TOOLS
        schema = {t.name: t.input_schema for t in await remote.tools()}["task_status"]
        assert "task_id" in schema["properties"]
        listed = await remote.call("pool_list")
        assert [p["pool_id"] for p in listed["pools"]] == ["pa"]
        submitted = await remote.call("task_submit", {"prompt": "queued", "pool_id": "pa"})
        status = await remote.call("task_status", {"task_id": submitted["task_id"]})
        assert status["status"] == "queued"
        with pytest.raises(RemoteToolError, match=r"task_status on http://127\.0\.0\.1") as refused:
            await remote.call("task_status", {"task_id": "t-nothing-here"})
        assert refused.value.tool == "task_status"
        assert "no task" in str(refused.value)


async def test_a_wrong_token_or_no_server_is_remote_unavailable(
    settings: Settings, tmp_path: Path
) -> None:
    async with facade_process(settings, tmp_path / "facade.log", mcp_http_token=TOKEN) as base:
        with pytest.raises(RemoteUnavailable, match="not reachable") as wrong:
            async with RemoteMCP(f"{base}/mcp", token="not-the-token-" + "y" * 20):
                pass
        assert "not-the-token" not in str(wrong.value)
    url = f"http://127.0.0.1:{free_port()}/mcp"
    with pytest.raises(RemoteUnavailable, match=f"MCP server at {url} is not reachable"):
        async with RemoteMCP(url, timeout=5.0):
            pass
