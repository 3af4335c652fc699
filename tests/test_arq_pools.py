"""arq pools against a real arq: an arq worker process (`tests/arq_functions.py`, in arq's own
venv `.venv-arq`, which `make test` creates) on a Redis of the test's own, and bridges started
by a real orchestrator. arq's outcomes map to ours; cancel and our timeout abort the job; an
arq worker killed with SIGKILL and started again loses nothing; a bridge killed mid-job does
not run the job twice; bad input fails with the pool and the problem named."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from orchestrator.broker import EmbeddedBroker, free_port, start_redis_server
from orchestrator.cli.render import pool_kind
from orchestrator.mcp.models import PoolSummary
from orchestrator.mcp.server import build_server
from orchestrator.orchestrator import Orchestrator
from shared.client import PoolManager, make_pool_spec
from shared.config import Settings
from shared.errors import PoolUnavailable
from shared.models import PoolType, TaskSpec, TaskStatus
from tests.conftest import CLI, REPO_ROOT, wait_until
from tests.test_mcp_server import held
from worker.arq_executor import ArqExecutor
from worker.executors import HAND_BACK

ARQ_PYTHON = REPO_ROOT / ".venv-arq" / "bin" / "python"
FUNCTIONS_SCRIPT = REPO_ROOT / "tests" / "arq_functions.py"
QUEUE = "team:jobs"


class ArqWorker:
    """The team's arq worker: one process of `tests/arq_functions.py` in arq's venv."""

    def __init__(self, url: str, log: Path) -> None:
        self.url, self.log = url, log
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, client: aioredis.Redis) -> None:
        """Start it and wait until it has polled the queue once (its health-check key)."""
        await client.delete(f"{QUEUE}:health-check")
        self.launch()

        async def polling() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            return bool(await client.exists(f"{QUEUE}:health-check"))

        await wait_until(polling, timeout=30, what="the arq worker to start")

    def launch(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(ARQ_PYTHON), str(FUNCTIONS_SCRIPT), self.url, QUEUE],
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
async def arq_redis(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    """The team's arq Redis: not ours, on a free loopback port."""
    assert ARQ_PYTHON.is_file(), f"no {ARQ_PYTHON}: run `make arq-venv` (make test does)"
    broker = await start_redis_server(free_port(), tmp_path / "arq-redis", appendonly=False)
    yield broker
    await broker.stop()


@pytest.fixture
async def arq_client(arq_redis: EmbeddedBroker) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(arq_redis.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def arq_worker(
    arq_redis: EmbeddedBroker, arq_client: aioredis.Redis, tmp_path: Path
) -> AsyncIterator[ArqWorker]:
    worker = ArqWorker(arq_redis.url, tmp_path / "arq-worker.log")
    await worker.start(arq_client)
    yield worker
    worker.kill()


def arq_options(url: str, **more: Any) -> dict[str, Any]:
    return {"function": "shout", "redis_url": url, "queue": QUEUE, **more}


async def runs(client: aioredis.Redis, token: str) -> int:
    return int(await client.get(f"runs:{token}") or 0)


async def test_arq_outcomes_map_to_task_results(
    orchestrator: Orchestrator,
    manager: PoolManager,
    arq_redis: EmbeddedBroker,
    arq_client: aioredis.Redis,
    arq_worker: ArqWorker,
) -> None:
    names = ["add", "boom", "slow", "hang", "blob", "again", "missing_fn"]
    options = arq_options(arq_redis.url, functions=names, on_job_timeout="fail")
    pool_id = await manager.spawn_pool("arq", name="team-arq", concurrency=8, options=options)
    info = await manager.get_pool(pool_id)
    where = f"{QUEUE} @ 127.0.0.1:{arq_redis.port}/0"
    assert pool_kind(info.spec) == f"arq/python\n{where}"
    assert PoolSummary.from_info(info).arq_queue == where

    direct = {"pool_id": pool_id, "max_attempts": 1}
    hello = await manager.submit({"prompt": "hello", **direct})
    added = await manager.submit({"call": "add", "args": [2, 3], **direct})
    failing = await manager.submit({"call": "boom", "args": ["bad input"], "max_attempts": 2})
    unknown = await manager.submit({"call": "nope", **direct})
    missing = await manager.submit({"call": "missing_fn", **direct})
    arq_timeout = await manager.submit({"call": "hang", **direct})
    our_timeout = await manager.submit(
        {"call": "slow", "args": ["t1", 30], "timeout": 1.5, **direct}
    )
    cancelled = await manager.submit({"call": "slow", "args": ["c1", 30], **direct})
    unsendable = await manager.submit({"call": "blob", "max_attempts": 3, "pool_id": pool_id})
    exhausted = await manager.submit({"call": "again", **direct})

    async def cancelled_runs_in_arq() -> bool:
        return await runs(arq_client, "c1") == 1

    await wait_until(cancelled_runs_in_arq, timeout=30, what="the job to run in arq")
    await manager.cancel(cancelled)

    got = {t: await manager.result(t, timeout=60) for t in (hello, added, failing, unknown)}
    got |= {t: await manager.result(t, timeout=60) for t in (missing, arq_timeout)}
    got |= {t: await manager.result(t, timeout=60) for t in (our_timeout, cancelled, unsendable)}
    got[exhausted] = await manager.result(exhausted, timeout=60)
    assert (got[hello].status, got[hello].output) == (TaskStatus.COMPLETED, "HELLO")
    assert (got[added].status, got[added].output) == (TaskStatus.COMPLETED, 5)
    assert got[failing].status is TaskStatus.DEAD_LETTERED and got[failing].attempts == 2
    assert f"arq job {failing}-a2: ValueError: bad input" in str(got[failing].error)
    assert got[unknown].status is TaskStatus.FAILED
    assert got[unknown].error == (
        f"arq pool 'team-arq' ({pool_id}) has no arq function 'nope'; it runs: add, again, blob, "
        "boom, hang, missing_fn, shout, slow"
    )
    assert got[missing].status is TaskStatus.FAILED
    assert got[missing].error == (
        f"arq pool 'team-arq' ({pool_id}): no arq worker on {where} has the function "
        "'missing_fn' (arq: function 'missing_fn' not found)"
    )
    assert got[arq_timeout].status is TaskStatus.FAILED  # on_job_timeout: fail
    assert "timed out in arq" in str(got[arq_timeout].error)
    assert got[our_timeout].status is TaskStatus.DEAD_LETTERED
    assert "timed out after 1.5s" in str(got[our_timeout].error)
    assert got[cancelled].status is TaskStatus.CANCELLED
    assert got[exhausted].status is TaskStatus.DEAD_LETTERED  # a failed attempt, the last one
    assert (
        f"arq job {exhausted}-a1: arq gave up on it (max 2 retries exceeded; arq's max_tries)"
        in str(got[exhausted].error)
    )
    assert (got[unsendable].status, got[unsendable].attempts) == (TaskStatus.FAILED, 1)
    assert f"arq job {unsendable}-a1: its result (bytes) cannot be sent as JSON" in str(
        got[unsendable].error
    )

    # both aborted jobs end in arq with a result (arq's abort), without finishing their work
    for task_id, token in ((our_timeout, "t1"), (cancelled, "c1")):

        async def aborted(task_id: str = task_id) -> bool:
            return bool(await arq_client.exists(f"arq:result:{task_id}-a1"))

        await wait_until(aborted, timeout=30, what=f"arq to abort {task_id}")
        assert not await arq_client.exists(f"finished:{token}")
    assert await arq_client.exists(f"arq:result:{failing}-a1", f"arq:result:{failing}-a2") == 2


async def test_nothing_is_lost_when_the_arq_worker_is_killed_and_restarted(
    orchestrator: Orchestrator,
    manager: PoolManager,
    arq_redis: EmbeddedBroker,
    arq_client: aioredis.Redis,
    arq_worker: ArqWorker,
) -> None:
    options = arq_options(arq_redis.url, functions=["count"])
    pool_id = await manager.spawn_pool("arq", name="restarts", concurrency=16, options=options)
    tokens = [f"k{i}" for i in range(60)]
    task = {"call": "count", "pool_id": pool_id, "timeout": 120, "max_attempts": 1}
    ids = await manager.submit_many([{**task, "args": [token, 0.2]} for token in tokens])

    async def some_done() -> bool:
        return sum([await runs(arq_client, t) for t in tokens]) >= 15

    await wait_until(some_done, timeout=60, what="the first jobs to run")
    arq_worker.kill()  # with jobs running and more queued
    await arq_worker.start(arq_client)
    results = [await manager.result(task_id, timeout=90) for task_id in ids]
    assert [(r.status, r.output) for r in results] == [(TaskStatus.COMPLETED, t) for t in tokens]
    counts = [await runs(arq_client, t) for t in tokens]
    assert min(counts) >= 1 and sum(counts) > len(tokens)  # the kill hit running jobs: re-run


async def test_a_bridge_killed_mid_job_waits_for_its_job_instead_of_running_it_again(
    orchestrator: Orchestrator,
    manager: PoolManager,
    arq_redis: EmbeddedBroker,
    arq_client: aioredis.Redis,
    arq_worker: ArqWorker,
) -> None:
    options = arq_options(arq_redis.url, functions=["slow"])
    pool_id = await manager.spawn_pool("arq", name="bridge-dies", options=options)
    task_id = await manager.submit({"call": "slow", "args": ["once", 3], "pool_id": pool_id})

    async def running_in_arq() -> bool:
        return await runs(arq_client, "once") == 1

    await wait_until(running_in_arq, timeout=30, what="the job to run in arq")
    backend = orchestrator.backends[PoolType.ARQ]
    for process in backend.describe(pool_id)["processes"]:
        os.killpg(process["pid"], signal.SIGKILL)  # the bridge and its arq child
    result = await manager.result(task_id, timeout=60)
    assert (result.status, result.output, result.attempts) == (TaskStatus.COMPLETED, 3, 2)
    assert await runs(arq_client, "once") == 1  # attempt 2 took attempt 1's job
    assert not await arq_client.exists(f"arq:job:{task_id}-a2", f"arq:result:{task_id}-a2")


async def test_a_handed_back_run_leaves_its_job_running_and_the_same_attempt_adopts_it(
    arq_redis: EmbeddedBroker, arq_client: aioredis.Redis, arq_worker: ArqWorker
) -> None:
    options = arq_options(arq_redis.url, functions=["slow"])
    spec = make_pool_spec("arq", None, name="hand-back", options=options)
    task = TaskSpec(call="slow", args=["hb", 1.0])
    first = ArqExecutor(spec)
    run = asyncio.create_task(first.run(task))

    async def running_in_arq() -> bool:
        return await runs(arq_client, "hb") == 1

    await wait_until(running_in_arq, timeout=30, what="the job to run in arq")
    run.cancel(HAND_BACK)  # what a draining worker does to a task it hands back
    with pytest.raises(asyncio.CancelledError):
        await run
    await first.aclose()
    second = ArqExecutor(spec)  # the next bridge, same attempt
    try:
        outcome = await second.run(task)
    finally:
        await second.aclose()
    assert (outcome.output, outcome.error) == (1.0, None)
    assert await runs(arq_client, "hb") == 1 and await arq_client.exists("finished:hb")


async def test_a_job_that_vanishes_from_arq_is_a_failed_attempt(
    arq_redis: EmbeddedBroker, arq_client: aioredis.Redis
) -> None:
    options = arq_options(arq_redis.url, queue="nobody:works:here")  # no arq worker reads it
    executor = ArqExecutor(make_pool_spec("arq", None, name="vanish", options=options))
    task = TaskSpec(prompt="lost")
    run = asyncio.create_task(executor.run(task))
    job = f"{task.id}-a1"

    async def queued() -> bool:
        return await arq_client.zscore("nobody:works:here", job) is not None

    await wait_until(queued, timeout=30, what="the job to be queued")
    await arq_client.zrem("nobody:works:here", job)  # e.g. deleted by an operator
    try:
        outcome = await run
    finally:
        await executor.aclose()
    assert outcome.retryable and outcome.error == (
        f"arq job {job}: neither queued nor a result in arq (its result expired, or the arq "
        "worker keeps none: keep_result=0)"
    )


async def test_an_unreachable_arq_redis_fails_the_spawn_with_the_reason(
    orchestrator: Orchestrator, manager: PoolManager
) -> None:
    port = free_port()  # nothing listens there
    options = arq_options(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(PoolUnavailable) as failed:
        await manager.spawn_pool("arq", name="no-arq-redis", options=options)
    message = str(failed.value)
    assert "arq pool 'no-arq-redis'" in message
    assert f"the arq Redis at 127.0.0.1:{port}/0 is unreachable" in message


async def test_cli_and_mcp_spawn_arq_pools(
    orchestrator: Orchestrator,
    manager: PoolManager,
    settings: Settings,
    arq_redis: EmbeddedBroker,
    arq_worker: ArqWorker,
) -> None:
    async def mhv(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            CLI,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "COLUMNS": "250"},  # the pools table in one line per row
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        return int(proc.returncode or 0), out.decode(), err.decode()

    code, out, err = await mhv(
        "pool", "spawn", "--type", "arq", "--name", "cli-arq", "--arq-function", "shout",
        "--arq-allow", "add", "--arq-redis-url", arq_redis.url, "--arq-queue", QUEUE, "--json",
    )  # fmt: skip
    assert code == 0, err
    spawned = json.loads(out)
    assert spawned["status"] == "running"
    assert spawned["spec"]["options"]["functions"] == ["add"]
    code, out, err = await mhv("pool", "exec", spawned["pool_id"], "--call", "add", "--arg", "4", "--arg", "5")  # fmt: skip
    assert (code, out.strip()) == (0, "9"), err
    code, out, _ = await mhv("pool", "list")
    assert code == 0 and f"{QUEUE} @ 127.0.0.1:{arq_redis.port}/0" in out

    code, _, err = await mhv(
        "pool", "spawn", "--type", "arq", "--arq-function", "shout",
        "--arq-redis-url", "redis://:secret@127.0.0.1:1/0",
    )  # fmt: skip
    assert code == 1 and "must not hold a password" in err and "secret" not in err
    code, _, err = await mhv("pool", "spawn", "--arq-function", "shout", "--arq-allow", "x")
    assert code == 1 and "--arq-function, --arq-allow: only for pools of --type arq" in err

    async with held(build_server(settings)) as client:
        options = arq_options(arq_redis.url)
        reply = await client.call_tool(
            "pool_spawn", {"pool_type": "arq", "name": "mcp-arq", "options": options}
        )
        assert not reply.is_error and reply.structured_content is not None
        assert reply.structured_content["status"] == "running"
        listed = await client.call_tool("pool_list", {})
        assert listed.structured_content is not None
        mine = [p for p in listed.structured_content["pools"] if p["name"] == "mcp-arq"]
        assert mine[0]["arq_queue"] == f"{QUEUE} @ 127.0.0.1:{arq_redis.port}/0"
        bad = await client.call_tool(
            "pool_spawn", {"pool_type": "arq", "name": "bad", "options": {"queue": QUEUE}}
        )
        assert bad.is_error
        text = bad.content[0].text  # type: ignore[union-attr]
        assert "arq pool 'bad': option function is required" in text
        assert "option redis_url is required" in text
