"""Delegated pools against Session-Buddy 0.36 (the in-repo stand-in, whose tool schemas
tests/standins/test_contract.py checks against the recorded real tools/list; the tests marked
`counterparts` also run against the real server with `make test-counterparts`), and bad input:
an unreachable URL, a wrong kind, a remote without the named tool, a reply of the wrong shape."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator.broker import free_port
from orchestrator.mcp.client import RemoteMCP
from orchestrator.pools.delegated_remote import json_reply
from shared.client import PoolManager
from shared.errors import InvalidRequest, PoolUnavailable
from shared.models import PoolStatus, TaskStatus
from tests.conftest import wait_until
from tests.standins.fixtures import Counterpart

pytestmark = pytest.mark.integration


def session_buddy_remote(url: str, **extra: Any) -> dict[str, Any]:
    return {"url": url, "kind": "session-buddy", "health_interval": 0.3, **extra}


async def remote_pools(url: str) -> set[str]:
    async with RemoteMCP(url) as remote:
        listed = json_reply(await remote.call("list_pools"))
    return {p["pool_id"] for p in listed["pools"]}


@pytest.mark.counterparts
async def test_prompts_run_on_a_session_buddy_pool_made_at_spawn_and_deleted_at_close(
    orchestrator: Any, manager: PoolManager, session_buddy: Counterpart
) -> None:
    pool = await manager.spawn_pool(
        "session-buddy", name="sb", remote=session_buddy_remote(session_buddy.url)
    )
    info = await manager.get_pool(pool)
    assert info.spec.concurrency == 3  # Session-Buddy's pools have three workers
    assert info.remote_health == "ok"
    assert f"mahavishnu-{pool}" in await remote_pools(session_buddy.url)
    prompts = [f"summarise chapter {n}" for n in range(7)]
    results = await manager.execute_batch([{"prompt": p, "pool_id": pool} for p in prompts])
    assert [r.status for r in results] == [TaskStatus.COMPLETED] * 7
    assert [r.output for r in results] == [f"Processed task: {p}" for p in prompts]
    call = await manager.execute_on_pool(pool, {"call": "add", "args": [1, 2]})
    assert call.status is TaskStatus.FAILED
    assert f"pool {pool} (remote {session_buddy.url})" in (call.error or "")
    assert "runs prompt tasks only" in (call.error or "")
    await manager.close_pool(pool)

    async def deleted() -> bool:
        return f"mahavishnu-{pool}" not in await remote_pools(session_buddy.url)

    await wait_until(deleted, 15, "the remote pool to be deleted at close")


async def test_an_outage_degrades_the_pool_and_its_tasks_wait_for_the_remote(
    orchestrator: Any, manager: PoolManager, session_buddy: Counterpart
) -> None:
    pool = await manager.spawn_pool(
        "session-buddy", name="sb", remote=session_buddy_remote(session_buddy.url)
    )
    await session_buddy.stop()

    async def degraded() -> bool:
        return (await manager.get_pool(pool)).status is PoolStatus.DEGRADED

    await wait_until(degraded, 15, "the pool to be degraded")
    info = await manager.get_pool(pool)
    assert "remote does not answer" in info.detail and session_buddy.url in info.remote_health
    assert any(why in info.remote_health for why in ("not reachable", "dropped the session"))
    waits = [
        asyncio.ensure_future(manager.execute_on_pool(pool, {"prompt": f"p{n}", "timeout": 60}))
        for n in range(6)
    ]
    await session_buddy.start()  # empty: the pool is made again on the remote

    async def running() -> bool:
        return (await manager.get_pool(pool)).status is PoolStatus.RUNNING

    await wait_until(running, 15, "the pool to run again")
    results = await asyncio.gather(*waits)
    assert [r.output for r in results] == [f"Processed task: p{n}" for n in range(6)]
    assert f"mahavishnu-{pool}" in await remote_pools(session_buddy.url)


async def test_a_tool_remote_with_a_template_and_an_output_path(
    orchestrator: Any, manager: PoolManager, session_buddy: Counterpart
) -> None:
    async with RemoteMCP(session_buddy.url) as remote:
        await remote.call("create_pool", {"pool_id": "by-hand"})
    remote = {
        "url": session_buddy.url,
        "kind": "tool",
        "tool": "execute_on_pool",
        "arguments": {"pool_id": "by-hand", "prompt": "{prompt}", "timeout": "{timeout}"},
        "output": "result.response",
        "error": "error",
    }
    pool = await manager.spawn_pool("delegated", name="tool", remote=remote)
    done = await manager.execute_on_pool(pool, {"prompt": "hello"})
    assert (done.status, done.output) == (TaskStatus.COMPLETED, "Processed task: hello")


async def test_a_reply_of_an_unexpected_shape_fails_the_task_naming_pool_remote_and_problem(
    orchestrator: Any, manager: PoolManager, session_buddy: Counterpart
) -> None:
    remote = {
        "url": session_buddy.url,
        "kind": "tool",
        "tool": "get_pool_status",
        "arguments": {"pool_id": "{prompt}"},
        "output": "status.running",
    }
    pool = await manager.spawn_pool("delegated", name="shape", remote=remote)
    failed = await manager.execute_on_pool(pool, {"prompt": "no-such-pool"})
    assert failed.status is TaskStatus.FAILED and failed.attempts == 1  # never retried
    error = failed.error or ""
    assert f"pool {pool} (remote {session_buddy.url})" in error
    assert "get_pool_status answered in an unexpected shape" in error
    assert "no 'status' on the output path 'status.running'" in error


async def spawn_error(manager: PoolManager, remote: dict[str, Any]) -> str:
    with pytest.raises(PoolUnavailable) as failed:
        await manager.spawn_pool("delegated", name="bad", remote=remote)
    return str(failed.value)


async def test_bad_remotes_fail_the_spawn_with_the_reason(
    orchestrator: Any, manager: PoolManager, session_buddy: Counterpart
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/mcp"
    message = await spawn_error(manager, {"url": nowhere, "kind": "session-buddy"})
    assert f"(remote {nowhere})" in message and "not reachable" in message

    message = await spawn_error(manager, {"url": session_buddy.url, "kind": "mahavishnu"})
    assert f"(remote {session_buddy.url}): the remote has no tool 'pool_execute'" in message
    assert "needed by kind mahavishnu" in message and "execute_on_pool" in message

    tool = {"url": session_buddy.url, "kind": "tool", "tool": "run_prompt"}
    message = await spawn_error(manager, {**tool, "arguments": {"text": "{prompt}"}})
    assert "the remote has no tool 'run_prompt'" in message

    with pytest.raises(InvalidRequest, match=r"remote.kind.*'session-buddy', 'mahavishnu'"):
        manager.pool_spec("delegated", remote={"url": session_buddy.url, "kind": "redis"})
    with pytest.raises(InvalidRequest, match="must not hold a user or password"):
        manager.pool_spec("delegated", remote={"url": "http://u:pw@h/mcp", "kind": "tool"})
    with pytest.raises(InvalidRequest, match="environment variable"):
        manager.pool_spec(
            "delegated", remote={"url": session_buddy.url, "kind": "mahavishnu", "token_env": "a b"}
        )
