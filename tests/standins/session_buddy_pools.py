"""Session-Buddy 0.36.0's worker pools, as its pool tools show them.

What the real server does (its `session_buddy/pools.py` and `worker.py`, and the recorded
transcript): a pool has exactly 3 workers taking tasks from one queue, so a 4th concurrent task
waits for a free worker. The `placeholder` backend answers `"Processed task: <prompt>"` after
100 ms; `llm` needs a configured Bifrost gateway and, without one, answers every task with an
envelope whose `error` names that (the call itself still succeeds). Task ids count per pool over
single and batch tasks (`P-task-0`, `P-batch-1`, ...). A call's `timeout` only stops the waiting:
the reply is `{"success": false, "pool_id": P, "error": ""}` (an empty message: asyncio's
TimeoutError has none) while the task stays queued and still runs later. A worker idle for more
than 300 s reports unhealthy, so `check_pool_health` says "degraded" for a pool unused for five
minutes. Deleting a pool waits for its workers' 1 s queue polls to end (~1 s). With
`reflect_tasks`, every completed task also becomes a reflection (see session_buddy_memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.standins.session_buddy_memory import Reflections

WORKERS_PER_POOL = 3
PLACEHOLDER_SECONDS = 0.1
IDLE_UNHEALTHY_SECONDS = 300.0
NO_GATEWAY = (
    "bifrost_error: RuntimeError: BifrostLLMRouter returns None for OPENAI — gateway disabled "
    "or the QWEN_ROUTE not in settings.routes. Set ONEIRIC_BIFROST_ENABLED=true and include "
    "'qwen_route' in ONEIRIC_BIFROST_ROUTES to enable the gateway."
)


@dataclass
class Task:
    task_id: str
    prompt: str
    context: dict[str, Any]
    done: asyncio.Future[dict[str, Any]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Worker:
    """One of a pool's three workers: takes the next queued task, runs it, keeps statistics."""

    def __init__(self, pool: Pool, index: int) -> None:
        self.pool = pool
        self.worker_id = f"{pool.pool_id}-worker-{index}"
        self.running = False
        self.tasks_processed = 0
        self.tasks_succeeded = 0
        self.total_processing_time = 0.0
        self.last_activity: datetime | None = None
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.running = True
        self._loop_task = asyncio.create_task(self._process())

    async def stop(self) -> None:
        self.running = False
        if self._loop_task is not None:
            await self._loop_task

    async def cancel(self) -> None:
        self.running = False
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task

    async def _process(self) -> None:
        loop = asyncio.get_running_loop()
        while self.running:
            try:
                task = await asyncio.wait_for(self.pool.queue.get(), timeout=1.0)
            except TimeoutError:
                continue
            self.last_activity = datetime.now(UTC)
            started = loop.time()
            result = await self._execute(task)
            self.total_processing_time += loop.time() - started
            self.tasks_processed += 1
            self.tasks_succeeded += 1
            if not task.done.done():
                task.done.set_result(result)

    async def _execute(self, task: Task) -> dict[str, Any]:
        envelope: dict[str, Any] = {
            "worker_id": self.worker_id,
            "pool_id": self.pool.pool_id,
            "task_id": task.task_id,
            "prompt": task.prompt,
        }
        if self.pool.backend == "llm":
            return envelope | {"response": None, "context": task.context, "error": NO_GATEWAY}
        await asyncio.sleep(PLACEHOLDER_SECONDS)
        return envelope | {"response": f"Processed task: {task.prompt}", "context": task.context}

    def healthy_now(self) -> bool:
        if not self.running:
            return False
        if self.last_activity is None:
            return True
        idle = (datetime.now(UTC) - self.last_activity).total_seconds()
        return idle <= IDLE_UNHEALTHY_SECONDS

    def status(self) -> dict[str, Any]:
        processed = self.tasks_processed
        return {
            "worker_id": self.worker_id,
            "pool_id": self.pool.pool_id,
            "running": self.running,
            "healthy": True,
            "tasks_processed": processed,
            "tasks_succeeded": self.tasks_succeeded,
            "tasks_failed": 0,
            "success_rate": self.tasks_succeeded / processed if processed else 1.0,
            "avg_processing_time": self.total_processing_time / processed if processed else 0,
            "total_processing_time": self.total_processing_time,
            "last_activity": self.last_activity.isoformat() if self.last_activity else None,
        }


class Pool:
    def __init__(
        self,
        pool_id: str | None,
        backend: str,
        model: str | None,
        reflect_tasks: bool,
        reflections: Reflections,
    ) -> None:
        self.pool_id = pool_id or f"pool_{uuid.uuid4().hex[:8]}"
        self.backend = backend
        self.metadata = {"backend": backend, "model": model, "reflect_tasks": reflect_tasks}
        self.reflect_tasks = reflect_tasks
        self.reflections = reflections
        self.queue: asyncio.Queue[Task] = asyncio.Queue()
        self.workers = [Worker(self, i) for i in range(WORKERS_PER_POOL)]
        self.created_at = datetime.now(UTC)
        self.started_at: datetime | None = None
        self.running = False
        self.tasks_submitted = 0
        self.tasks_completed = 0
        self.tasks_failed = 0

    def start(self) -> None:
        for worker in self.workers:
            worker.start()
        self.running = True
        self.started_at = datetime.now(UTC)

    async def shutdown(self) -> None:
        await asyncio.gather(*(worker.stop() for worker in self.workers))
        self.workers.clear()
        self.running = False

    async def execute(
        self, prompt: str, context: dict[str, Any] | None, timeout: float | None
    ) -> dict[str, Any]:
        task = Task(f"{self.pool_id}-task-{self.tasks_submitted}", prompt, context or {})
        self.tasks_submitted += 1
        self.queue.put_nowait(task)
        return await self._finish(task, timeout)

    async def execute_batch(
        self, prompts: list[str], context: dict[str, Any] | None, timeout: float | None
    ) -> list[dict[str, Any] | BaseException]:
        first = self.tasks_submitted
        tasks = [
            Task(f"{self.pool_id}-batch-{first + i}", prompt, context or {})
            for i, prompt in enumerate(prompts)
        ]
        self.tasks_submitted += len(tasks)
        for task in tasks:
            self.queue.put_nowait(task)
        return await asyncio.gather(
            *(self._finish(task, timeout) for task in tasks), return_exceptions=True
        )

    async def _finish(self, task: Task, timeout: float | None) -> dict[str, Any]:
        try:
            result = await asyncio.wait_for(asyncio.shield(task.done), timeout=timeout)
        except TimeoutError:
            self.tasks_failed += 1
            raise
        self.tasks_completed += 1
        if self.reflect_tasks:
            provenance = {
                "source_session_id": self.pool_id,
                "source_artifact_uri": f"pool://{self.pool_id}/task/{result['task_id']}",
            }
            with contextlib.suppress(Exception):  # best effort, as in the real pool
                self.reflections.store(
                    json.dumps(result, default=str),
                    [
                        "pool-task",
                        f"pool:{self.pool_id}",
                        f"provenance:{json.dumps(provenance, sort_keys=True)}",
                    ],
                    self.pool_id,
                )
        return result

    def health(self) -> dict[str, Any]:
        healthy = [worker.healthy_now() for worker in self.workers]
        return {
            "pool_id": self.pool_id,
            "status": "healthy" if all(healthy) else "degraded",
            "workers_healthy": sum(healthy),
            "workers_total": len(self.workers),
            "worker_health": [worker.status() for worker in self.workers],
        }

    def status(self) -> dict[str, Any]:
        submitted = self.tasks_submitted
        return {
            "pool_id": self.pool_id,
            "running": self.running,
            "workers_count": len(self.workers),
            "queue_size": self.queue.qsize(),
            "tasks_submitted": submitted,
            "tasks_completed": self.tasks_completed,
            "tasks_failed": self.tasks_failed,
            "success_rate": self.tasks_completed / submitted if submitted else 1.0,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "workers": [worker.status() for worker in self.workers],
        }


class PoolManager:
    """All pools of one stand-in process (the real one keeps them in memory too)."""

    def __init__(self, reflections: Reflections) -> None:
        self.pools: dict[str, Pool] = {}
        self.reflections = reflections

    def create(
        self, pool_id: str | None, backend: str, model: str | None, reflect_tasks: bool
    ) -> Pool:
        if pool_id and pool_id in self.pools:
            raise ValueError(f"Pool {pool_id} already exists")
        pool = Pool(pool_id, backend, model, reflect_tasks, self.reflections)
        pool.start()
        self.pools[pool.pool_id] = pool
        return pool

    async def delete(self, pool_id: str) -> bool:
        pool = self.pools.pop(pool_id, None)
        if pool is None:
            return False
        await pool.shutdown()
        return True

    def choose(self, selector: str) -> Pool:
        if not self.pools:
            raise ValueError("No pools available for routing")
        pools = list(self.pools.values())
        if selector == "least_loaded":
            return min(pools, key=lambda pool: pool.queue.qsize())
        if selector == "round_robin":
            return pools[0]
        if selector == "random":
            return random.choice(pools)
        raise ValueError(f"Unknown selector strategy: {selector}")

    def health(self) -> dict[str, Any]:
        details = [pool.health() for pool in self.pools.values()]
        return {
            "pool_manager_running": True,
            "pools_total": len(self.pools),
            "pools_healthy": sum(1 for d in details if d["status"] == "healthy"),
            "pool_details": details,
        }

    async def reset(self) -> None:
        """Drop every pool at once (workers cancelled, not drained): a fresh server."""
        pools, self.pools = list(self.pools.values()), {}
        for pool in pools:
            for worker in pool.workers:
                await worker.cancel()
