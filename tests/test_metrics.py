"""/metrics after a known run, and the worker's JSON log lines about its tasks.

Real processes: an orchestrator and two external workers with --metrics-port, one worker
logging JSON; the test process submits (its PoolManager feeds its own metrics, as the MCP
facade's does) and scrapes every /metrics with prometheus-client's own parser.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.client import PoolManager
from shared.config import Settings
from shared.hooks import ROUTED
from shared.metrics import MetricsServer, definitions, install, uninstall
from tests.conftest import CLI, REPO_ROOT, wait_until

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-token-never-logged-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(port: int) -> Samples:
    """Every sample of a /metrics, keyed by (name, sorted labels)."""
    async with httpx.AsyncClient() as http:
        reply = await http.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    reply.raise_for_status()
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        samples[("family", (("name", family.name),))] = 1.0
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def start(args: list[str], env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            *args, stdout=out, stderr=out, env=env, cwd=str(REPO_ROOT)
        )


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def local_metrics(settings: Settings) -> AsyncIterator[MetricsServer]:
    """This process's metrics on a free port (as the MCP facade serves its own)."""
    server = install(settings, role="test client", port=free_port())
    assert server is not None
    yield server
    server.close()
    uninstall()


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    await wait_until(check, timeout=30, what=what)


async def test_metrics_after_a_known_run(
    settings: Settings, tmp_path: Path, local_metrics: MetricsServer
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MAHAVISHNU_MCP_HTTP_TOKEN": SECRET}
    orch_port, port_a, port_b = free_port(), free_port(), free_port()
    procs = [
        await start(
            [CLI, "orchestrator", "--metrics-port", str(orch_port)], env, tmp_path / "orch.log"
        )
    ]
    try:
        async with PoolManager(settings) as pm:
            before = await scrape(local_metrics.port)
            pool_a = await pm.spawn_pool("local", name="metrics-a", min_workers=0)
            pool_b = await pm.spawn_pool("local", name="metrics-b", min_workers=0)
            worker = [sys.executable, "-m", "worker", "--worker-id"]
            procs.append(
                await start(
                    [*worker, "wa", "--pool", pool_a, "--metrics-port", str(port_a)],
                    env,
                    tmp_path / "wa.log",
                )
            )
            procs.append(
                await start(
                    [*worker, "wb", "--pool", pool_b, "--metrics-port", str(port_b)],
                    {**env, "MAHAVISHNU_LOG_FORMAT": "json"},
                    tmp_path / "wb.log",
                )
            )

            async def both_serving() -> bool:
                pools = {p.spec.id: p for p in await pm.list_pools()}
                return all(pools[p].load.workers >= 1 for p in (pool_a, pool_b))

            await until(both_serving, "both external workers serving")
            direct_a = [{"call": "add", "args": [n, 1], "pool_id": pool_a} for n in range(7)]
            direct_b = [{"call": "echo", "args": [n], "pool_id": pool_b} for n in range(3)]
            routed = [{"call": "noop"} for _ in range(5)]
            failing = {"call": "fail", "args": ["boom"], "pool_id": pool_b, "max_attempts": 2}
            ids = await pm.submit_many([*direct_a, *direct_b, *routed, failing])
            results = [await pm.result(task_id, timeout=60) for task_id in ids]
        assert [r.status for r in results[:-1]] == ["completed"] * 15
        assert results[-1].status == "dead_lettered"
        on_a = sum(1 for r in results if r.pool_id == pool_a)
        on_b = sum(1 for r in results if r.pool_id == pool_b) - 1  # the failing one

        mine = await scrape(local_metrics.port)
        for pool, count in ((pool_a, 7), (pool_b, 4), (ROUTED, 5)):
            name = "mahavishnu_tasks_submitted_total"
            assert value(mine, name, pool=pool) - value(before, name, pool=pool) == count

        a, b = await scrape(port_a), await scrape(port_b)
        assert value(a, "mahavishnu_tasks_started_total", pool=pool_a) == on_a
        assert value(a, "mahavishnu_tasks_completed_total", pool=pool_a) == on_a
        assert value(a, "mahavishnu_task_duration_seconds_count", pool=pool_a) == on_a
        assert value(a, "mahavishnu_task_queue_wait_seconds_count", pool=pool_a) == on_a
        assert value(a, "mahavishnu_task_end_to_end_seconds_count", pool=pool_a) == on_a
        assert value(b, "mahavishnu_tasks_completed_total", pool=pool_b) == on_b
        assert value(b, "mahavishnu_tasks_started_total", pool=pool_b) == on_b + 2  # 2 attempts
        assert value(b, "mahavishnu_tasks_retried_total", pool=pool_b) == 1
        assert value(b, "mahavishnu_tasks_dead_lettered_total", pool=pool_b) == 1
        assert value(a, "mahavishnu_tasks_failed_total", pool=pool_a) == 0

        async def orchestrator_caught_up() -> bool:
            o = await scrape(orch_port)
            return (
                value(o, "mahavishnu_pool_completed_total", pool=pool_a) == on_a
                and value(o, "mahavishnu_pool_completed_total", pool=pool_b) == on_b
            )

        await until(orchestrator_caught_up, "the lease holder's pool counters")
        o = await scrape(orch_port)
        routed_total = sum(
            value(o, "mahavishnu_tasks_routed_total", pool=p) for p in (pool_a, pool_b)
        )
        assert routed_total == 5
        assert value(o, "mahavishnu_pool_failed_total", pool=pool_b) == 1
        for pool in (pool_a, pool_b):
            assert value(o, "mahavishnu_pool_workers", pool=pool, kind="external") == 1
            assert value(o, "mahavishnu_pool_workers", pool=pool, kind="local") == 0
            assert value(o, "mahavishnu_pool_status", pool=pool, status="running") == 1
            assert value(o, "mahavishnu_pool_backlog", pool=pool) == 0
        # every family of the definitions (the docs, the dashboard) is served by someone
        served = {
            labels[0][1]
            for scraped in (o, a, b, mine)
            for (kind, labels) in scraped
            if kind == "family"
        }
        for metric in definitions.ALL:
            assert metric.name.removesuffix("_total") in served, metric.name
    finally:
        for proc in reversed(procs):
            await stop(proc)

    # the JSON-logging worker: every line parses, lines about a task name it, its pool and
    # worker; no secret appears anywhere
    lines = (tmp_path / "wb.log").read_text().splitlines()
    docs = [json.loads(line) for line in lines if line.startswith("{")]
    assert docs and len(docs) == len([line for line in lines if line.strip()]), lines
    about_failing = [doc for doc in docs if doc.get("task") == ids[-1]]
    assert len(about_failing) == 2, docs  # the retry, then the dead letter
    for doc in about_failing:
        assert doc["pool"] == pool_b and doc["worker"] == "wb", doc
        assert {"time", "level", "logger", "msg", "attempt"} <= set(doc), doc
    for name in ("orch.log", "wa.log", "wb.log"):
        assert SECRET not in (tmp_path / name).read_text()


def test_metrics_port_taken_is_a_clear_error(settings: Settings) -> None:
    from shared.errors import ConfigError

    with socket.socket() as busy:
        busy.bind((settings.metrics_host, 0))
        busy.listen()
        port = int(busy.getsockname()[1])
        try:
            with pytest.raises(ConfigError, match=f"cannot serve /metrics on .*:{port}"):
                install(settings, role="test", port=port)
        finally:
            uninstall()


async def test_mcp_http_facade_serves_metrics_on_its_own_port(
    settings: Settings, tmp_path: Path
) -> None:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    from tests.test_mcp_server import TOKEN, facade_process, ok

    port = free_port()
    extra = {"mcp_http_token": TOKEN, "metrics_port": str(port)}
    async with facade_process(settings, tmp_path / "facade.log", **extra) as base:
        async with (
            httpx2.AsyncClient(headers={"authorization": f"Bearer {TOKEN}"}) as http_client,
            Client(streamable_http_client(f"{base}/mcp", http_client=http_client)) as c,
        ):
            for _ in range(3):
                await ok(c, "task_submit", {"call": "noop"})  # routed: no orchestrator needed
        samples = await scrape(port)
        assert value(samples, "mahavishnu_tasks_submitted_total", pool=ROUTED) == 3
        async with httpx.AsyncClient() as http:  # not on the MCP port
            assert (await http.get(f"{base}/metrics")).status_code in (401, 404)
    assert TOKEN not in (tmp_path / "facade.log").read_text()
