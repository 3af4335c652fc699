"""Memory sync to Session-Buddy and Akosha, and search across all sources, end to end.

Real Redis (both brokers), real orchestrators (in-process, and one process killed with -9),
real worker processes, and the MCP services from the `session_buddy` / `akosha` fixtures: the
stand-ins, or the real servers under `make test-counterparts` (tests marked `counterparts`).
What a destination holds is read back through its own tools: Session-Buddy's
`search_by_source_session` lists each stored reflection with its artifact URI (a double send
shows as a repeated URI); Akosha's `search_all_systems` finds a stored text exactly (1.0).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from orchestrator.mcp.client import RemoteMCP
from orchestrator.mcp.server import build_server
from orchestrator.memory.destinations import record_text, reply_text
from orchestrator.memory.search import search_all
from orchestrator.memory.stats import memory_report
from orchestrator.orchestrator import Orchestrator
from shared.client import PoolManager
from shared.config import Settings, settings_env
from shared.connection import Redis
from shared.finals import FinalResult, memory_record
from shared.memory import MemoryRecord, read_pool_memory
from shared.models import TaskResult, TaskStatus, new_id
from tests.conftest import wait_until
from tests.standins.fixtures import Counterpart

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACT = re.compile(r"🔗 Artifact: (mahavishnu://\S+)")


@pytest.fixture
async def sync_settings(
    settings: Settings,
    session_buddy: Counterpart,
    akosha: Counterpart,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """The test's settings with memory sync on, pointed at the two services (also in the
    environment, for orchestrator processes). Passes run when a test asks for them."""
    synced = settings.model_copy(
        update={
            "memory_aggregation_enabled": True,
            "session_buddy_pool_url": session_buddy.url,
            "akosha_url": akosha.url,
            "memory_sync_interval": 3600.0,
            "memory_sync_burst": 1_000_000,
            "memory_sync_timeout": 30.0,
            "memory_sync_backoff_max": 1.0,
            "memory_sync_batch": 50,
        }
    )
    for name, value in settings_env(synced).items():
        monkeypatch.setenv(name, value)
    return synced


class Running:
    """An orchestrator running in-process."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.orch = Orchestrator(settings, log_dir=log_dir)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Orchestrator:
        self._task = asyncio.create_task(self.orch.run())
        await self.orch.wait_ready()
        aggregator = self.orch.aggregator
        if aggregator is not None:  # its own first pass, so none runs beside a test's

            async def passed() -> bool:
                return aggregator.passes > 0

            await wait_until(passed, what="the orchestrator's first memory sync pass")
        return self.orch

    async def __aexit__(self, *exc: object) -> None:
        self.orch.request_stop()
        assert self._task is not None
        await self._task


async def sync(orch: Orchestrator) -> dict[str, int]:
    assert orch.aggregator is not None
    return await orch.aggregator.sync_once()


async def synced(redis: Redis, settings: Settings, pool_id: str) -> dict[str, tuple[int, int]]:
    """(synced, pending) per destination, from the counters and the consumer groups (an
    orchestrator's own first pass at start may have sent some: the counters see every pass)."""
    _, stats = await memory_report(redis, settings, [pool_id])
    return {name: (d.synced, d.pending) for name, d in stats[0].destinations.items()}


def both(synced_count: int, pending: int = 0) -> dict[str, tuple[int, int]]:
    return {"session-buddy": (synced_count, pending), "akosha": (synced_count, pending)}


async def run_tasks(pools: PoolManager, pool_id: str, words: list[str]) -> list[str]:
    results = await pools.execute_batch(
        [{"call": "echo", "args": [w], "tags": ["sync-test"]} for w in words], pool_id=pool_id
    )
    assert all(r.status is TaskStatus.COMPLETED for r in results)
    return [r.task_id for r in results]


async def reflections_of(service: Counterpart, pool_id: str) -> Counter[str]:
    """Artifact URIs Session-Buddy holds for the pool, with how often each was stored."""
    async with RemoteMCP(service.url) as remote:
        reply = await remote.call(
            "search_by_source_session", {"session_id": pool_id, "limit": 5000}
        )
    body = reply_text(reply)
    assert body is not None, reply
    return Counter(ARTIFACT.findall(body))


async def akosha_holds(service: Counterpart, records: list[MemoryRecord]) -> set[str]:
    """Task ids whose exact text Akosha finds (similarity 1.0) with its own task id."""
    found: set[str] = set()
    async with RemoteMCP(service.url) as remote:
        for record in records:
            reply = await remote.call(
                "search_all_systems", {"query": record_text(record), "limit": 3, "threshold": 0.99}
            )
            hits = reply.get("results", []) if isinstance(reply, dict) else []
            if any(h.get("conversation_id") == record.task_id for h in hits):
                found.add(record.task_id)
    return found


def uris(pool_id: str, task_ids: list[str]) -> set[str]:
    return {f"mahavishnu://{pool_id}/task/{t}" for t in task_ids}


async def assert_synced(redis: Redis, settings: Settings, pool_id: str, expected: int) -> None:
    overview, pools = await memory_report(redis, settings, [pool_id])
    for name in ("session-buddy", "akosha"):
        stats = pools[0].destinations[name]
        assert (stats.synced, stats.pending) == (expected, 0), (name, stats)
        assert overview[name].lag_s == 0.0 and overview[name].last_success


# ------------------------------------------------------------------------------------ tests


@pytest.mark.counterparts
async def test_tasks_reach_each_service_exactly_once_across_passes_and_a_restart(
    sync_settings: Settings,
    redis: Redis,
    session_buddy: Counterpart,
    akosha: Counterpart,
    tmp_path: Path,
) -> None:
    async with PoolManager(sync_settings) as pools:
        async with Running(sync_settings, tmp_path / "logs") as orch:
            pool_id = await pools.spawn_pool("local", name="sync", min_workers=1)
            first = await run_tasks(pools, pool_id, [f"alpha {i}" for i in range(12)])
            assert await synced(redis, sync_settings, pool_id) == both(0, 12)
            await sync(orch)
            assert await synced(redis, sync_settings, pool_id) == both(12)
            second = await run_tasks(pools, pool_id, [f"beta {i}" for i in range(8)])
            await sync(orch)
            assert await synced(redis, sync_settings, pool_id) == both(20)
            assert (await sync(orch)) == {"session-buddy": 0, "akosha": 0}
        # a new orchestrator (a restarted aggregator) goes on from the watermark
        async with Running(sync_settings, tmp_path / "logs2") as orch:
            third = await run_tasks(pools, pool_id, [f"gamma {i}" for i in range(5)])
            await sync(orch)
            assert await synced(redis, sync_settings, pool_id) == both(25)
            await pools.close_pool(pool_id)
    task_ids = first + second + third
    held = await reflections_of(session_buddy, pool_id)
    assert set(held) == uris(pool_id, task_ids) and set(held.values()) == {1}
    records = await read_pool_memory(redis, sync_settings, pool_id, 1000)
    assert await akosha_holds(akosha, records) == set(task_ids)
    await assert_synced(redis, sync_settings, pool_id, len(task_ids))


async def test_an_outage_delays_records_and_loses_none(
    sync_settings: Settings,
    redis: Redis,
    session_buddy: Counterpart,
    akosha: Counterpart,
    tmp_path: Path,
) -> None:
    async with PoolManager(sync_settings) as pools, Running(sync_settings, tmp_path) as orch:
        pool_id = await pools.spawn_pool("local", name="outage", min_workers=1)
        before = await run_tasks(pools, pool_id, [f"before {i}" for i in range(6)])
        await sync(orch)
        assert await synced(redis, sync_settings, pool_id) == both(6)
        await session_buddy.stop()
        during = await run_tasks(pools, pool_id, [f"during {i}" for i in range(7)])
        assert "session-buddy" not in await sync(orch)  # it failed: nothing counted
        assert await synced(redis, sync_settings, pool_id) == {
            "session-buddy": (6, 7),
            "akosha": (13, 0),
        }

        overview, _ = await memory_report(redis, sync_settings, [pool_id])
        down = overview["session-buddy"]
        assert down.pending == 7 and down.lag_s > 0 and "not reachable" in down.last_error
        assert overview["akosha"].pending == 0

        await session_buddy.start()  # back, empty: it holds only what is sent from now on
        aggregator = orch.aggregator
        assert aggregator is not None

        async def caught_up() -> bool:
            _, stats = await memory_report(redis, sync_settings, [pool_id])
            return stats[0].destinations["session-buddy"].pending == 0

        aggregator.wake()  # the loop retries after its backoff (at most 1 s here)
        await wait_until(caught_up, timeout=30, what="the backlog to reach Session-Buddy")
        await pools.close_pool(pool_id)
    held = await reflections_of(session_buddy, pool_id)
    assert set(held) == uris(pool_id, during) and set(held.values()) == {1}
    await assert_synced(redis, sync_settings, pool_id, len(before) + len(during))


async def add_records(
    redis: Redis, settings: Settings, pool_id: str, count: int, *, maxlen: int | None = None
) -> list[str]:
    """`count` memory records written as a worker writes them (for pools with no workers);
    `maxlen` trims the stream exactly, as a full stream is trimmed."""
    await redis.sadd(settings.keys.memory_sync_pools, pool_id)
    pipe = redis.pipeline(transaction=False)
    task_ids = []
    for i in range(count):
        result = TaskResult(
            task_id=new_id("t"),
            pool_id=pool_id,
            worker_id="w-test",
            status=TaskStatus.COMPLETED,
            output=f"output {i}",
            duration=0.01,
            finished_at=time.time(),
        )
        task_ids.append(result.task_id)
        fields = memory_record(
            settings, FinalResult(result, summary=f"record {i}"), pool_id=pool_id
        )
        pipe.xadd(settings.keys.pool_memory(pool_id), fields, maxlen=maxlen, approximate=False)
    await pipe.execute()
    return task_ids


@pytest.mark.counterparts
async def test_two_orchestrators_share_the_work_and_never_send_twice(
    sync_settings: Settings, redis: Redis, session_buddy: Counterpart, tmp_path: Path
) -> None:
    pool_id = new_id("shared")
    task_ids = await add_records(redis, sync_settings, pool_id, 80)
    async with (
        Running(sync_settings, tmp_path / "a") as one,
        Running(sync_settings, tmp_path / "b") as two,
    ):
        await asyncio.gather(sync(one), sync(two), sync(one), sync(two))
    assert await synced(redis, sync_settings, pool_id) == both(80)
    held = await reflections_of(session_buddy, pool_id)
    assert set(held) == uris(pool_id, task_ids) and set(held.values()) == {1}


@pytest.mark.counterparts
async def test_an_orchestrator_killed_mid_batch_resends_nothing(
    sync_settings: Settings,
    redis: Redis,
    session_buddy: Counterpart,
    akosha: Counterpart,
    tmp_path: Path,
) -> None:
    pool_id = new_id("killed")
    task_ids = await add_records(redis, sync_settings, pool_id, 150)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "MAHAVISHNU_MEMORY_SYNC_INTERVAL": "0.2",
        "MAHAVISHNU_MEMORY_SYNC_BATCH": "100",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator", "orchestrator",
        env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    counters = sync_settings.keys.pool_memory_sync(pool_id)

    async def under_way() -> bool:
        synced = await redis.hget(counters, "session-buddy:synced")
        return int(synced or 0) >= 10

    try:
        await wait_until(under_way, timeout=60, what="the orchestrator to start sending")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
    synced = int(await redis.hget(counters, "session-buddy:synced") or 0)
    assert synced < len(task_ids), "killed too late: the batch was already done"

    # the dead orchestrator's entries are taken over once its heartbeat expired
    async with Running(sync_settings, tmp_path / "logs") as orch:

        async def done() -> bool:
            await sync(orch)
            _, stats = await memory_report(redis, sync_settings, [pool_id])
            return all(d.pending == 0 for d in stats[0].destinations.values())

        await wait_until(done, timeout=60, what="the survivor to finish the batch")
    held = await reflections_of(session_buddy, pool_id)
    assert set(held) == uris(pool_id, task_ids)
    assert set(held.values()) == {1}, "a record reached Session-Buddy twice"
    await assert_synced(redis, sync_settings, pool_id, len(task_ids))


async def mhv_json(*args: str) -> Any:
    """`mahavishnu ARGS --json` in its own process, with the test's settings (environment)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator", *args, "--json",
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, (args, out, err)
    return json.loads(out)


CORPUS = {
    "relevant": [
        "tune the redis cluster failover timeout",
        "redis stream consumer group lag alert",
        "migrate the redis sentinel to a redis cluster",
    ],
    "other": [
        "bake sourdough bread with rye flour",
        "water the tomato plants in the greenhouse",
        "paint the garden fence green",
        "sort the holiday photos by date",
    ],
}


@pytest.mark.counterparts
async def test_search_finds_relevant_records_first_from_every_source(
    sync_settings: Settings,
    redis: Redis,
    session_buddy: Counterpart,
    akosha: Counterpart,
    tmp_path: Path,
) -> None:
    async with PoolManager(sync_settings) as pools, Running(sync_settings, tmp_path) as orch:
        pool_id = await pools.spawn_pool("local", name="corpus", min_workers=1)
        relevant = await run_tasks(pools, pool_id, CORPUS["relevant"])
        await run_tasks(pools, pool_id, CORPUS["other"])
        await sync(orch)

        found = await search_all(redis, sync_settings, "redis", limit=10, pool_ids=[pool_id])
        assert found.warnings == []
        top = [h.task_id for h in found.hits[: len(relevant)]]
        assert set(top) == set(relevant)
        assert len({h.task_id for h in found.hits}) == len(found.hits)  # one hit per task
        assert "session-buddy" in found.hits[0].sources and LOCAL_LABEL in found.hits[0].sources

        # Akosha finds a stored text exactly (its lite-mode search is near-exact)
        records = await read_pool_memory(redis, sync_settings, pool_id, 100)
        target = next(r for r in records if r.task_id == relevant[0])
        exact = await search_all(redis, sync_settings, record_text(target), pool_ids=[pool_id])
        assert exact.hits[0].task_id == relevant[0]
        assert {"akosha", LOCAL_LABEL} <= set(exact.hits[0].sources)

        only = await search_all(redis, sync_settings, "redis", source="session-buddy")
        assert only.sources == ["session-buddy"] and only.hits
        assert all(h.sources == ["session-buddy"] for h in only.hits)

        # the same through the command line
        cli = await mhv_json("pool", "search", "redis", "--pool", pool_id, "--limit", "3")
        assert {h["task_id"] for h in cli["hits"]} == set(relevant)
        assert cli["sources"] == [LOCAL_LABEL, "session-buddy", "akosha"]
        assert "local" in cli["hits"][0]["sources"] and cli["warnings"] == []
        monitor = await mhv_json("pool", "monitor", pool_id)
        memory = monitor[pool_id]["memory"]
        assert memory["records"] == len(CORPUS["relevant"]) + len(CORPUS["other"])
        assert memory["bytes"] > 0 and memory["last_sync"]
        assert memory["destinations"]["akosha"]["pending"] == 0
        assert set(monitor["_memory_sync"]) == {"session-buddy", "akosha"}
        await pools.close_pool(pool_id)


LOCAL_LABEL = "local"


async def test_a_service_down_leaves_a_warning_never_a_failed_search(
    sync_settings: Settings,
    redis: Redis,
    session_buddy: Counterpart,
    akosha: Counterpart,
) -> None:
    pool_id = new_id("down")
    task_ids = await add_records(redis, sync_settings, pool_id, 5)
    await session_buddy.stop()
    await akosha.stop()
    found = await search_all(redis, sync_settings, "record", pool_ids=[pool_id])
    assert {h.task_id for h in found.hits} == set(task_ids)
    assert all(h.sources == [LOCAL_LABEL] for h in found.hits)
    assert len(found.warnings) == 2
    assert all("left out" in w for w in found.warnings), found.warnings

    async with Client(build_server(sync_settings)) as client:  # the MCP tools say the same
        result = await client.call_tool(
            "pool_search_memory", {"query": "record", "pool_ids": [pool_id], "source": "all"}
        )
        found_mcp = result.structured_content or {}
        assert not result.is_error and found_mcp["count"] == 5
        assert len(found_mcp["warnings"]) == 2 and found_mcp["hits"][0]["sources"] == ["local"]
        refused = await client.call_tool("pool_search_memory", {"query": "x", "source": "web"})
        assert refused.is_error
        monitor = (await client.call_tool("pool_monitor", {})).structured_content or {}
        assert set(monitor["memory_sync"]) == {"session-buddy", "akosha"}


@pytest.mark.counterparts
async def test_records_trimmed_before_they_were_sent_are_counted_lost(
    sync_settings: Settings, redis: Redis, session_buddy: Counterpart, tmp_path: Path
) -> None:
    pool_id = new_id("trimmed")
    await add_records(redis, sync_settings, pool_id, 5)
    async with Running(sync_settings, tmp_path) as orch:
        await sync(orch)
        assert await synced(redis, sync_settings, pool_id) == both(5)
        kept = (await add_records(redis, sync_settings, pool_id, 30, maxlen=10))[-10:]
        # before the next pass the monitor counts what is left as pending
        assert await synced(redis, sync_settings, pool_id) == both(5, 10)
        await sync(orch)
    _, stats = await memory_report(redis, sync_settings, [pool_id])
    for name, d in stats[0].destinations.items():
        assert (d.synced, d.lost, d.pending) == (15, 20, 0), name
    held = await reflections_of(session_buddy, pool_id)
    assert uris(pool_id, kept) <= set(held) and set(held.values()) == {1}


async def test_a_burst_of_finished_tasks_is_synced_without_waiting_for_the_interval(
    sync_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    bursty = sync_settings.model_copy(update={"memory_sync_burst": 5})
    async with PoolManager(bursty) as pools, Running(bursty, tmp_path) as orch:
        pool_id = await pools.spawn_pool("local", name="burst", min_workers=1)
        assert orch.aggregator is not None
        passes = orch.aggregator.passes
        await run_tasks(pools, pool_id, [f"burst {i}" for i in range(5)])

        async def sent() -> bool:  # the interval is an hour: only the burst can wake a pass
            assert orch.aggregator is not None
            passed = orch.aggregator.passes > passes  # (a pass's records show before it ends)
            return passed and await synced(redis, bursty, pool_id) == both(5)

        await wait_until(sent, timeout=30, what="a pass after the burst")
        await pools.close_pool(pool_id)


async def test_the_sync_lag_shows_in_top_and_on_metrics(
    sync_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    from orchestrator.cli.top_data import memory_sync_lag
    from shared.metrics import install, uninstall
    from tests.test_metrics import free_port, scrape, value

    assert (
        await memory_sync_lag(
            redis, sync_settings.model_copy(update={"memory_aggregation_enabled": False})
        )
        is None
    )
    port = free_port()
    server = install(sync_settings, role="orchestrator", port=port)
    assert server is not None
    try:
        async with (
            PoolManager(sync_settings) as pools,
            Running(sync_settings, tmp_path / "logs") as orch,
        ):
            pool_id = await pools.spawn_pool("local", name="lag", min_workers=1)
            await run_tasks(pools, pool_id, ["lagging 1", "lagging 2"])
            assert orch.aggregator is not None
            await orch.aggregator.pool_ids()  # the aggregator follows the pool from now on
            lag = await memory_sync_lag(redis, sync_settings)
            assert lag is not None and lag > 0  # two records wait for both services
            await sync(orch)
            assert await memory_sync_lag(redis, sync_settings) == 0.0
            samples = await scrape(port)
            for target in ("session-buddy", "akosha"):
                key = ("mahavishnu_memory_sync_lag_seconds", (("target", target),))
                assert key in samples, sorted(samples)[:20]
                assert value(samples, "mahavishnu_memory_sync_lag_seconds", target=target) == 0
            await pools.close_pool(pool_id)
    finally:
        server.close()
        uninstall()
