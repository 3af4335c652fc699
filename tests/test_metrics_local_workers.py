"""The worker-side figures of an orchestrator's local workers on the orchestrator's /metrics.

Real processes: an orchestrator serving /metrics starts a local pool's workers; they write
snapshots to its metrics folder (shared/metrics/snapshots.py), which it adds to its families.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from shared.client import PoolManager
from shared.config import Settings
from tests.conftest import CLI, REPO_ROOT
from tests.test_metrics import Samples, free_port, scrape, stop, until, value

pytestmark = pytest.mark.integration

TASKS = 40


async def test_local_workers_counts_reach_the_orchestrators_metrics(
    settings: Settings, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    port = free_port()
    cwd = tmp_path / "run"  # the orchestrator's log dir (.mahavishnu/logs) goes here
    cwd.mkdir()
    with (tmp_path / "orch.log").open("wb") as out:
        orch = await asyncio.create_subprocess_exec(
            CLI, "orchestrator", "--metrics-port", str(port), stdout=out, stderr=out, env=env,
            cwd=str(cwd),
        )  # fmt: skip
    try:
        async with PoolManager(settings) as pm:
            pool = await pm.spawn_pool("local", name="local-metrics", min_workers=2)
            ids = await pm.submit_many(
                [{"call": "add", "args": [n, 1], "pool_id": pool} for n in range(TASKS)]
            )
            results = [await pm.result(task_id, timeout=60) for task_id in ids]
            assert [r.status for r in results] == ["completed"] * TASKS

            def all_counted(o: Samples) -> bool:
                return all(
                    value(o, name, pool=pool) == TASKS
                    for name in (
                        "mahavishnu_tasks_started_total",
                        "mahavishnu_tasks_completed_total",
                        "mahavishnu_task_duration_seconds_count",
                        "mahavishnu_task_queue_wait_seconds_count",
                        "mahavishnu_task_end_to_end_seconds_count",
                    )
                )

            async def counted() -> bool:
                return all_counted(await scrape(port))

            await until(counted, f"the local workers' {TASKS} tasks on the orchestrator")
            assert value(await scrape(port), "mahavishnu_tasks_failed_total", pool=pool) == 0
            metrics_dir = cwd / ".mahavishnu" / "logs" / "metrics"

            async def a_file_per_worker() -> bool:  # one per orchestrator run, one per worker
                folders = list(metrics_dir.iterdir())
                return len(folders) == 1 and len(list(folders[0].glob("*.metrics.json"))) == 2

            await until(a_file_per_worker, "a snapshot file of each of the two local workers")

            # workers that exited keep counting: closing the pool stops them, the counts stay
            await pm.close_pool(pool, wait=True, timeout=60)
            assert all_counted(await scrape(port))
    finally:
        await stop(orch)
