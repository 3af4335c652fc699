"""The chaos harness: a known set of tasks, a fault, and the figures that prove nothing was lost.

Every scenario records its figures; the run prints them in the terminal summary and, with
`MAHAVISHNU_WRITE_RELIABILITY=1`, writes them into docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from orchestrator.broker import EmbeddedBroker, free_port, start_redis_server
from shared.client import PoolManager
from shared.config import Settings, settings_env
from shared.connection import connect, decode_hash, text
from shared.errors import ResultTimeout, TaskNotFound, TaskStateLost
from shared.keys import WORKER_GROUP
from shared.models import TaskResult, TaskStatus
from shared.state import worker_draining, worker_stuck
from tests.conftest import delete_prefix, make_settings
from worker.worker import drain_deadline

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
    lost_reported: int = 0  # callers told TaskStateLost: the broker lost the task's record
    stuck: int = 0  # workers still draining past their drain deadline at the end
    serving: str = ""  # "local serving / target" over the live pools at the end
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
        self._waits: dict[str, asyncio.Task[TaskResult]] = {}
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

    async def submit(
        self,
        count: int,
        *,
        seconds: float = 0.0,
        pool_id: str | None = None,
        expect_reply: bool = True,
        **task: Any,
    ) -> list[str]:
        """Submit `count` recorded tasks (routed, or straight to `pool_id`); return their ids."""
        start = len(self.tokens)
        batch = []
        for n in range(start, start + count):
            token = f"k{n}"
            batch.append({"call": "record", "args": [token, seconds], **task})
        ids = await self.manager.submit_many(batch, pool_id=pool_id, expect_reply=expect_reply)
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

    def wait(self, task_ids: list[str], timeout: float) -> None:
        """Start callers waiting (each bounded by `timeout`) on these tasks' results now, so
        they wait through the fault; `finish` collects what they got."""
        for task_id in task_ids:
            if task_id not in self._waits:
                wait = self.manager.result(task_id, timeout=timeout)
                self._waits[task_id] = asyncio.create_task(wait, name=f"wait-{task_id}")

    async def finish(self, *, timeout: float = 90.0) -> Figures:
        """Wait for every task's final result (all at once, each bounded) and measure."""
        from tests.chaos.funcs import runs_key

        fig = self.figures
        self.wait(self.ids, timeout)
        statuses: Counter[TaskStatus] = Counter()
        for task_id in self.ids:
            try:
                statuses[(await self._waits[task_id]).status] += 1
            except TaskStateLost:
                fig.lost_reported += 1
            except ResultTimeout:
                fig.lost += 1
                try:
                    state = await self.manager.status(task_id)
                    where = f"{state.status} on {state.pool_id}/{state.worker_id}"
                except TaskNotFound:
                    where = "its record is gone"
                fig.notes.append(f"{task_id}: {where}")
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
        await self.settle()
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

    async def pool_workers(self) -> dict[str, tuple[str, int, list[dict[str, str]]]]:
        """Each live pool's status, target and live workers' heartbeats, read from Redis."""
        found = {}
        for member in sorted(await self.redis.smembers(self.keys.pools)):
            pool_id = text(member)
            raw = decode_hash(await self.redis.hgetall(self.keys.pool(pool_id)))
            beats = []
            for worker_id in sorted(await self.redis.smembers(self.keys.pool_workers(pool_id))):
                beat = decode_hash(await self.redis.hgetall(self.keys.worker(text(worker_id))))
                if beat:
                    beats.append(beat)
            found[pool_id] = (raw.get("status", ""), int(raw.get("target_workers", 0) or 0), beats)
        return found

    async def capacity(self) -> tuple[int, int, int, int]:
        """(local workers serving, their target, draining, stuck) over the supervised pools; a
        failed pool has no workers to count."""
        serving = target = draining = stuck = 0
        now = time.time()
        for status, wanted, beats in (await self.pool_workers()).values():
            if status in ("failed", "closed"):
                continue
            target += wanted
            for beat in beats:
                if worker_draining(beat):
                    draining += 1
                    stuck += worker_stuck(beat, now)
                elif beat.get("managed_by"):  # external workers add capacity, never count
                    serving += 1
        return serving, target, draining, stuck

    async def settle(self) -> None:
        """Wait (bounded) until the pools serve exactly their targets and nobody drains; record
        what is left when the bound passes."""
        from tests.conftest import wait_until

        async def settled() -> bool:
            serving, target, draining, _ = await self.capacity()
            return serving == target and draining == 0

        with contextlib.suppress(AssertionError):  # what is left is what we report
            await wait_until(settled, timeout=drain_deadline(self.settings) + 10, what="targets")
        serving, target, _, stuck = await self.capacity()
        self.figures.stuck = stuck
        self.figures.serving = f"{serving}/{target}"

    def start_worker(
        self, pool_id: str, name: str, *, module: str = "worker"
    ) -> subprocess.Popen[bytes]:
        """An external worker, started by hand the way an operator would: `python -m worker`
        (or another `module` with its command line)."""
        log = (self.tmp_path / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--pool", pool_id],
            stdout=log,
            stderr=log,
            env=self.env(),
            cwd=REPO,
            start_new_session=True,
        )
        log.close()
        self.processes.append(proc)
        return proc

    def worker_starts(self, pool_id: str) -> int:
        """How many worker processes the orchestrators started for the pool (one log each)."""
        return len(list((self.tmp_path / "logs" / pool_id).glob("*.log")))

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
        for wait in self._waits.values():
            wait.cancel()
        await asyncio.gather(*self._waits.values(), return_exceptions=True)
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
    assert fig.stuck == 0, fig
    serving, _, target = fig.serving.partition("/")
    assert serving == target, fig


@pytest.fixture
def chaos_settings(prefix: str, tmp_path: Path, broker_url: str) -> Settings:
    """Fast heartbeats and reclaim, and an events stream long enough to count every result;
    on the standalone server and on the cluster."""
    return make_settings(
        prefix,
        tmp_path,
        redis_url=broker_url,
        events_max_len=100_000,
        task_deadline_grace=1.0,
    )


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


TABLE_START = "<!-- chaos figures: written by tests/chaos with MAHAVISHNU_WRITE_RELIABILITY=1 -->"
TABLE_END = "<!-- end of chaos figures -->"
COLUMNS = (
    "| # | scenario | fault | tasks | completed | dead-lettered | lost | lost, reported "
    "| recorded twice | re-executed | left in streams | stuck | serving/target | seconds |"
)


def figures_table(figures: list[Figures]) -> str:
    """The Markdown table of docs/reliability.md, one row per scenario in run order."""
    rows = [COLUMNS, "|---:|---|---|" + "---:|" * 11]
    for n, f in enumerate(figures, 1):
        rows.append(
            f"| {n} | {f.scenario.replace('_', ' ')} | {f.faults} | {f.tasks} | {f.completed} "
            f"| {f.dead_lettered} | {f.lost} | {f.lost_reported} | {f.recorded_twice} "
            f"| {f.reruns} | {f.left_in_streams} | {f.stuck} | {f.serving} | {f.seconds:.1f} |"
        )
    return "\n".join(rows)


def write_reliability(figures: list[Figures], path: Path) -> None:
    """Replace the figures table between the markers of `path`."""
    doc = path.read_text()
    head, found, rest = doc.partition(TABLE_START)
    _, found_end, tail = rest.partition(TABLE_END)
    if not (found and found_end):
        raise AssertionError(f"{path} has no {TABLE_START!r} ... {TABLE_END!r} markers")
    path.write_text(f"{head}{TABLE_START}\n{figures_table(figures)}\n{TABLE_END}{tail}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the chaos figures; write them into docs/reliability.md when asked to."""
    if not FIGURES:
        return
    terminalreporter.section("chaos figures")
    header = (
        f"{'scenario':52} {'tasks':>5} {'done':>5} {'dead':>4} {'lost':>4} {'told':>4} "
        f"{'twice':>5} {'reruns':>6} {'left':>4} {'stuck':>5} {'serving':>7} {'s':>6}"
    )
    terminalreporter.write_line(header)
    for f in FIGURES:
        terminalreporter.write_line(
            f"{f.scenario[:52]:52} {f.tasks:5} {f.completed:5} {f.dead_lettered:4} {f.lost:4} "
            f"{f.lost_reported:4} {f.recorded_twice:5} {f.reruns:6} {f.left_in_streams:4} "
            f"{f.stuck:5} {f.serving:>7} {f.seconds:6}"
        )
        for note in f.notes:
            terminalreporter.write_line(f"    {note}")
    if os.environ.get("MAHAVISHNU_WRITE_RELIABILITY") == "1":
        write_reliability(FIGURES, REPO / "docs" / "reliability.md")


@pytest.fixture(scope="session", autouse=True)
def _reset_figures() -> Iterator[None]:
    FIGURES.clear()
    yield
