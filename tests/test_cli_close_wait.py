"""`mahavishnu pool close ID --wait`: progress while the pool drains, the end when it is closed,
an optional --timeout, and Ctrl-C that stops the waiting but not the closing.

The CLI runs as subprocesses with this test's settings (exported by the `settings` fixture)
against an in-process orchestrator and real worker processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from orchestrator.cli import app
from shared.client import PoolManager
from shared.models import PoolStatus, TaskStatus
from tests.conftest import wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent


async def start_cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        cwd=REPO_ROOT,
    )


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def busy_pool(manager: PoolManager, seconds: float) -> tuple[str, str]:
    """A pool whose one worker runs a task of `seconds`; (pool id, task id) once it runs."""
    pool_id = await manager.spawn_pool("local", name="closing", min_workers=1)
    task_id = await manager.submit(
        {"call": "sleep", "args": [seconds], "max_attempts": 1, "timeout": 60}, pool_id=pool_id
    )

    async def running() -> bool:
        return (await manager.status(task_id)).status is TaskStatus.RUNNING

    await wait_until(running, what="the task to run")
    return pool_id, task_id


async def test_close_wait_shows_progress_and_ends_when_closed(
    orchestrator: Any, manager: PoolManager
) -> None:
    pool_id, task_id = await busy_pool(manager, 1.5)
    code, out, err = await finish(await start_cli("pool", "close", pool_id, "--wait", "--json"))
    assert code == 0, err
    assert json.loads(out) == {"pool_id": pool_id, "status": "closed"}
    progress = err.splitlines()
    assert progress and all(line.startswith(f"pool {pool_id}: ") for line in progress), err
    assert any("closing" in line for line in progress), err
    assert all(
        "task(s) left in its stream" in line and "worker(s) left" in line for line in progress
    )
    assert (await manager.get_pool(pool_id)).status is PoolStatus.CLOSED
    assert (await manager.status(task_id)).status is TaskStatus.COMPLETED  # it drained

    code, out, err = await finish(await start_cli("pool", "close", pool_id, "--wait"))
    assert (code, out.strip(), err) == (0, f"pool {pool_id} closed", "")  # already closed


async def test_close_wait_timeout_says_where_the_pool_is(
    orchestrator: Any, manager: PoolManager
) -> None:
    pool_id, _ = await busy_pool(manager, 30)
    proc = await start_cli("pool", "close", pool_id, "--wait", "--timeout", "0.5")
    code, out, err = await finish(proc)
    assert (code, out) == (1, "")
    last = err.splitlines()[-1]
    assert last.startswith(f"error: pool {pool_id!r} did not close within 0.5s; it is "), err
    assert last.endswith("and goes on closing"), err
    assert "worker(s) left" in last
    assert (await manager.get_pool(pool_id)).status is PoolStatus.CLOSING


async def test_ctrl_c_stops_waiting_and_the_pool_goes_on_closing(
    orchestrator: Any, manager: PoolManager
) -> None:
    pool_id, _ = await busy_pool(manager, 30)
    proc = await start_cli("pool", "close", pool_id, "--wait")
    assert proc.stderr is not None
    first = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
    assert first.startswith(f"pool {pool_id}: "), first
    proc.send_signal(signal.SIGINT)
    code, out, err = await finish(proc)
    assert (code, out) == (130, "")
    assert err.splitlines()[-1] == (
        f"interrupted: stopped waiting; pool {pool_id} goes on closing "
        f"(`mahavishnu pool close {pool_id} --wait` follows it again)"
    )

    async def closed() -> bool:
        return (await manager.get_pool(pool_id)).status is PoolStatus.CLOSED

    # the worker hands its task back after drain_grace (5 s in tests) and the close completes
    await wait_until(closed, timeout=60, what="the pool to close")


def test_close_flags_that_contradict_are_usage_errors(settings: Any) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["pool", "close", "p-1", "--wait", "--no-wait"])
    assert result.exit_code == 2 and "--wait and --no-wait exclude each other" in result.output
    result = runner.invoke(app, ["pool", "close", "p-1", "--wait", "--timeout", "0"])
    assert result.exit_code == 2 and "above 0" in result.output


def test_close_wait_of_an_unknown_pool_is_one_line(settings: Any) -> None:
    result = CliRunner().invoke(app, ["pool", "close", "p-none", "--wait"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == ["error: no pool with id 'p-none'"]
