"""A delegated pool through the CLI (`pool spawn --type delegated --remote-url ... --remote-kind
...`, `pool list`) and the MCP facade (`pool_spawn` with `remote`, `pool_list`), against the
Session-Buddy stand-in; the token is never shown."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest
from mcp import Client

from orchestrator.mcp.server import build_server
from shared.config import Settings
from tests.conftest import CLI, REPO_ROOT
from tests.standins.fixtures import Counterpart

pytestmark = pytest.mark.integration


async def cli(*args: str) -> tuple[int, str, str]:
    """`mahavishnu ARGS` in its own process with this test's settings (in the environment)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = await asyncio.create_subprocess_exec(
        CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_spawns_and_lists_a_delegated_pool_without_showing_the_token(
    orchestrator: Any,
    session_buddy: Counterpart,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    monkeypatch.setenv("SB_TOKEN", "secret-" + "s" * 30)  # the stand-in takes any token
    monkeypatch.setenv("MAHAVISHNU_SPAWN_TIMEOUT", "60")
    code, out, err = await cli(
        "pool", "spawn", "--type", "session-buddy", "--name", "sb",
        "--remote-url", session_buddy.url, "--remote-kind", "session-buddy",
        "--remote-token-env", "SB_TOKEN", "--json",
    )  # fmt: skip
    assert code == 0, err
    spawned = json.loads(out)
    assert spawned["spec"]["remote"]["token_env"] == "SB_TOKEN"
    assert spawned["remote_health"] == "ok" and spawned["status"] == "running"
    code, out, err = await cli("pool", "list")
    assert code == 0, err
    assert session_buddy.url.split("//")[1][:15] in out and "(ok)" in out
    for shown in (out, json.dumps(spawned)):
        assert "secret-" not in shown

    code, _, err = await cli(
        "pool", "spawn", "--type", "delegated", "--remote-url", session_buddy.url,
        "--remote-kind", "tool", "--remote-tool", "x", "--remote-arguments", "{not json",
    )  # fmt: skip
    assert code != 0 and "--remote-arguments is not JSON" in err
    code, _, err = await cli("pool", "spawn", "--type", "local", "--remote-url", "http://h/mcp")
    assert code != 0 and "--remote-url needs --remote-kind" in err


async def test_mcp_pool_spawn_takes_a_remote_and_pool_list_shows_it(
    orchestrator: Any, session_buddy: Counterpart, settings: Settings
) -> None:
    async with Client(build_server(settings)) as client:
        remote = {"url": session_buddy.url, "kind": "session-buddy"}
        spawned = await client.call_tool(
            "pool_spawn", {"pool_type": "delegated", "name": "sb", "remote": remote}
        )
        assert not spawned.is_error, spawned.content
        assert isinstance(spawned.structured_content, dict)
        assert spawned.structured_content["status"] == "running"
        listed = (await client.call_tool("pool_list", {})).structured_content
        assert isinstance(listed, dict)
        (pool,) = listed["pools"]
        assert (pool["remote_url"], pool["remote_kind"], pool["remote_health"]) == (
            session_buddy.url,
            "session-buddy",
            "ok",
        )
        secret = await client.call_tool(
            "pool_spawn", {"pool_type": "delegated", "remote": {**remote, "token_env": "HOME"}}
        )
        assert secret.is_error
        text = " ".join(getattr(c, "text", "") for c in secret.content)
        assert "remote.token_env" in text and "mcp_allow_pool_code is off" in text
