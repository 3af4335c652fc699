"""The chaos harness: a known set of tasks, a fault, and the figures that prove nothing was lost.

Every scenario records its figures; the run prints them in the terminal summary and, with
`MAHAVISHNU_WRITE_RELIABILITY=1`, writes them into docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from orchestrator.local_pool import settings_env
from shared.broker import EmbeddedBroker, free_port, start_redis_server
from shared.client import PoolManager
from shared.config import Settings
from shared.connection import connect
from shared.errors import ResultTimeout
from shared.keys import WORKER_GROUP
from shared.models import TaskStatus
from tests.conftest import delete_prefix, make_settings

REPO = Path(__file__).resolve().parents[2]
FIGURES: list[Figures] = []
FUNCTIONS = {"record": "tests.chaos.funcs:record", "explode": "tests.chaos.funcs:explode"}


@dataclass
class Figures:
    """What one scenario did and what it proved."""

    scenario: str
    tasks: int
    faults: str
    completed: int = 0
    dead_lettered: int = 0
    other: int = 0
    lost: int = 0
    recorded_twice: int = 0
    reruns: int = 0
    left_in_streams: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class Chaos:
    """One scenario's tasks, processes and measurements."""

    def __init__(self, settings: Settings, manager: PoolManager, tmp_path: Path, name: str) -> None:
        self.settings = settings
        self.keys = settings.keys
        self.manager = manager
        self.tmp_path = tmp_path
        self.figures = Figures(name, 0, "")
        self.ids: list[str] = []
        self.tokens: dict[str, str] = {}
        self.processes: list[subprocess.Popen[bytes]] = []
        self.redis = connect(settings)  # with retries: the broker may restart under us
        self._started = time.monotonic()
        self.closed = False

    def start_orchestrator(self, name: str) -> subprocess.Popen[bytes]:
        """An orchestrator in its own process (so it can be killed with SIGKILL)."""
        code = (
            "import asyncio, logging, sys; from pathlib import Path;"
            "from shared.config import load_settings;"
            "from orchestrator.orchestrator import Orchestrator;"
            "logging.basicConfig(level=logging.INFO);"
            f"o = Orchestrator(load_settings(), orchestrator_id={name!r}, log_dir=Path(sys.argv[1]));"
            "import signal;"
            "loop = asyncio.new_event_loop();"
            "loop.add_signal_handler(signal.SIGTERM, o.request_stop);"
            "loop.run_until_complete(o.run())"
        )
        log = (self.tmp_path / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(self.tmp_path / "logs")],
            stdout=log,
            stderr=log,
            env=self.env(),
            cwd=REPO,
        )
        log.close()
        self.processes.append(proc)
        return proc

    def env(self) -> dict[str, str]:
        """The environment of processes started by the scenario."""
        return {**os.environ, **settings_env(self.settings), "PYTHONPATH": str(REPO)}

    async def spawn(self, name: str, **spec: Any) -> str:
        """A local pool with the chaos functions registered."""
        return await self.manager.spawn_pool("local", name=name, functions=FUNCTIONS, **spec)

    async def submit(self, count: int, *, seconds: float = 0.0, **task: Any) -> list[str]:
        """Submit `count` recorded tasks; return their ids."""
        start = len(self.tokens)
        batch = []
        for n in range(start, start + count):
            token = f"k{n}"
            batch.append({"call": "record", "args": [token, seconds], **task})
        ids = await self.manager.submit_many(batch)
        for n, task_id in enumerate(ids, start):
            self.tokens[task_id] = f"k{n}"
        self.ids += ids
        self.figures.tasks += count
        return ids

    async def running(self, at_least: int) -> None:
        """Wait until at least `at_least` of the scenario's tasks have been counted as run."""
        from tests.chaos.funcs import runs_key
        from tests.conftest import wait_until

        async def started() -> bool:
            return await self.redis.hlen(runs_key()) >= at_least

        await wait_until(started, timeout=30, what=f"{at_least} tasks to start")

    async def finish(self, *, timeout: float = 90.0) -> Figures:
        """Wait for every task's final result and measure."""
        from tests.chaos.funcs import runs_key

        fig = self.figures
        deadline = time.monotonic() + timeout
        statuses: Counter[TaskStatus] = Counter()
        for task_id in self.ids:
            try:
                left = max(0.1, deadline - time.monotonic())
                statuses[(await self.manager.result(task_id, timeout=left)).status] += 1
            except ResultTimeout:
                fig.lost += 1
                state = await self.manager.status(task_id)
                fig.notes.append(f"{task_id}: {state.status} on {state.pool_id}/{state.worker_id}")
        fig.completed = statuses[TaskStatus.COMPLETED]
        fig.dead_lettered = statuses[TaskStatus.DEAD_LETTERED]
        fig.other = sum(statuses.values()) - fig.completed - fig.dead_lettered
        completions = Counter(
            f[b"task"].decode()
            for _, f in await self.redis.xrange(self.keys.events)
            if f.get(b"type") == b"TASK_COMPLETED"
        )
        fig.recorded_twice = sum(1 for task_id in self.ids if completions[task_id] > 1)
        runs = await self.redis.hgetall(runs_key())
        fig.reruns = sum(int(v) - 1 for v in runs.values() if int(v) > 1)
        # entries held by a killed process are taken back once its heartbeat expires
        from tests.conftest import wait_until

        async def drained() -> bool:
            return await self.leftovers() == 0

        with contextlib.suppress(AssertionError):  # what is left is what we report
            await wait_until(drained, timeout=self.settings.orchestrator_lease_ttl + 10)
        fig.left_in_streams = await self.leftovers()
        fig.seconds = round(time.monotonic() - self._started, 2)
        FIGURES.append(fig)
        return fig

    async def leftovers(self) -> int:
        """Entries still in the ingress and pool streams (acked ones are deleted)."""
        total = await self.redis.xlen(self.keys.ingress)
        for pool_id in await self.redis.smembers(self.keys.pools):
            stream = self.keys.pool_tasks(pool_id.decode())
            total += await self.redis.xlen(stream)
            with contextlib.suppress(aioredis.ResponseError):
                total += int((await self.redis.xpending(stream, WORKER_GROUP))["pending"])
        return total

    async def worker_pids(self) -> list[int]:
        """Pids of every worker with a live heartbeat."""
        pids = []
        async for key in self.redis.scan_iter(match=f"{self.keys.prefix}worker:*"):
            pid = await self.redis.hget(key, "pid")
            if pid:
                pids.append(int(pid))
        return pids

    async def close(self) -> None:
        """Stop what the scenario started, including orphaned workers of killed orchestrators."""
        if self.closed:
            return
        self.closed = True
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        for pid in await self.worker_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        await self.redis.aclose()


def assert_nothing_lost(fig: Figures, *, dead_lettered: int = 0) -> None:
    """The chaos contract: every task ends as intended, once, and no entry is left behind."""
    assert fig.lost == 0, fig
    assert fig.completed + fig.dead_lettered == fig.tasks, fig
    assert fig.dead_lettered == dead_lettered, fig
    assert fig.recorded_twice == 0, fig
    assert fig.left_in_streams == 0, fig


@pytest.fixture
def chaos_settings(prefix: str, tmp_path: Path) -> Settings:
    """Fast heartbeats and reclaim, and an events stream long enough to count every result."""
    return make_settings(prefix, tmp_path, events_max_len=100_000, task_deadline_grace=1.0)


@pytest.fixture
async def chaos(
    chaos_settings: Settings,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Chaos]:
    """A scenario on the shared test Redis."""
    async for run in _chaos(chaos_settings, tmp_path, request.node.name, monkeypatch):
        yield run


async def _chaos(
    settings: Settings, tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Chaos]:
    monkeypatch.setenv("MAHAVISHNU_SETTINGS_DIR", str(tmp_path / "no-settings"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    async with PoolManager(settings) as manager:
        run = Chaos(settings, manager, tmp_path, name.removeprefix("test_"))
        try:
            yield run
        finally:
            await run.close()
    with contextlib.suppress(RedisConnectionError):  # a test's own broker may be gone already
        await delete_prefix(settings.redis_url, settings.key_prefix)


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    """A Redis of the test's own, with AOF on, that the test may restart."""
    broker = await start_redis_server(free_port(), tmp_path / "own-redis", appendonly=True)
    yield broker
    await broker.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the chaos figures; write docs/reliability.md when asked to."""
    if not FIGURES:
        return
    terminalreporter.section("chaos figures")
    header = f"{'scenario':44} {'tasks':>5} {'done':>5} {'dead':>5} {'lost':>4} {'twice':>5} {'reruns':>6} {'left':>4} {'s':>6}"
    terminalreporter.write_line(header)
    for f in FIGURES:
        terminalreporter.write_line(
            f"{f.scenario:44} {f.tasks:5} {f.completed:5} {f.dead_lettered:5} {f.lost:4} "
            f"{f.recorded_twice:5} {f.reruns:6} {f.left_in_streams:4} {f.seconds:6}"
        )
    if os.environ.get("MAHAVISHNU_WRITE_RELIABILITY") == "1":
        (REPO / "docs" / "chaos-figures.json").write_text(
            json.dumps([asdict(f) for f in FIGURES], indent=2) + "\n"
        )


@pytest.fixture(scope="session", autouse=True)
def _reset_figures() -> Iterator[None]:
    FIGURES.clear()
    yield
