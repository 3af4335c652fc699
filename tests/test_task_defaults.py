"""Task defaults (`task_default_timeout`, `task_max_attempts`) reach every entry point: the
client's submit and route_task, the CLI and the MCP tools (`shared.client.make_task` is their one
home). Each routed task is read back from the ingress stream exactly as an orchestrator gets it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.cli.render import build_task
from orchestrator.mcp.server import build_server
from shared.client import PoolManager
from shared.codec import TaskDelegate, decode
from shared.config import Settings
from shared.errors import OrchestratorNotRunning
from shared.models import TaskSpec
from tests.conftest import delete_prefix, make_settings
from tests.test_mcp_server import held, ok

DEFAULTS = {"task_default_timeout": 7.0, "task_max_attempts": 5}


@pytest.fixture
async def configured(prefix: str, tmp_path: Path) -> AsyncIterator[Settings]:
    """Settings with non-default task defaults (no orchestrator runs)."""
    value = make_settings(prefix, tmp_path, **DEFAULTS)
    yield value
    await delete_prefix(value.redis_url, prefix)


async def routed(settings: Settings, task_id: str) -> TaskSpec:
    """The task as it waits in the ingress stream."""
    async with PoolManager(settings) as pools:
        for _entry_id, fields in await pools.redis.xrange(settings.keys.ingress):
            msg = decode(fields)
            if isinstance(msg, TaskDelegate) and msg.task.id == task_id:
                return msg.task
    raise AssertionError(f"task {task_id} is not in the ingress")


def assert_defaults(task: TaskSpec) -> None:
    assert (task.timeout, task.max_attempts) == (7.0, 5)


async def test_submit_applies_the_defaults(configured: Settings) -> None:
    async with PoolManager(configured) as pools:
        task_id = await pools.submit({"call": "noop"})
    assert_defaults(await routed(configured, task_id))


async def test_route_task_applies_the_defaults(configured: Settings) -> None:
    async with PoolManager(configured) as pools:
        with pytest.raises(OrchestratorNotRunning) as caught:
            await pools.route_task({"call": "noop"}, "round_robin", timeout=5)
        task_id = caught.value.task_id
    task = await routed(configured, task_id)
    assert_defaults(task)
    assert task.strategy == "round_robin"


async def test_given_values_win_over_the_defaults(configured: Settings) -> None:
    async with PoolManager(configured) as pools:
        task_id = await pools.submit({"call": "noop", "timeout": 3, "max_attempts": 1})
    task = await routed(configured, task_id)
    assert (task.timeout, task.max_attempts) == (3.0, 1)


def test_the_cli_applies_the_defaults(tmp_path: Path) -> None:
    settings = make_settings("unused:", tmp_path, **DEFAULTS)
    task = build_task(
        settings, prompt=None, call="noop", args=None, kwargs=None, command=False, argv=None,
        timeout=None, max_attempts=None,
    )  # fmt: skip
    assert_defaults(task)


async def test_the_mcp_tools_apply_the_defaults(configured: Settings) -> None:
    async with held(build_server(configured)) as client:
        submitted = await ok(client, "task_submit", {"call": "noop"})
    assert_defaults(await routed(configured, submitted["task_id"]))
