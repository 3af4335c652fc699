"""The pool-backend interface: the supervisor drives any registered backend the same way.

A backend that runs in-process `Worker`s is registered in place of a pool type's own backend; spawn, execute, scale and close then work through the interface alone,
and an unregistered type is refused at spawn with the reason."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator import pools as registry
from orchestrator.orchestrator import Orchestrator
from orchestrator.pools.base import PoolBackend, Sweep
from shared.client import PoolManager
from shared.config import Settings
from shared.errors import PoolUnavailable
from shared.models import PoolSpec, PoolType
from tests.conftest import wait_until
from worker.worker import Worker


class InProcessBackend(PoolBackend):
    """Workers as tasks of this event loop (what a minimal backend has to provide)."""

    def __init__(
        self, settings: Settings, log_dir: Path, owner_id: str, wake: Callable[[], None]
    ) -> None:
        self.settings = settings
        self.owner_id = owner_id
        self.wake = wake
        self.workers: dict[str, dict[str, tuple[Worker, asyncio.Task[None]]]] = {}
        self.serial = 0

    def problem(self, spec: PoolSpec) -> str:
        return "" if spec.worker_type == "python" else "in-process pools run python only"

    async def reconcile(self, spec: PoolSpec, target: int) -> None:
        mine = self.workers.setdefault(spec.id, {})
        active = [w for w, (worker, _) in mine.items() if not worker._stopping.is_set()]
        for _ in range(target - len(active)):
            self.serial += 1
            worker = Worker(
                self.settings, spec.id, worker_id=f"{spec.id}-t{self.serial}",
                managed_by=self.owner_id,
            )  # fmt: skip
            task = asyncio.create_task(worker.run())
            task.add_done_callback(lambda _t: self.wake())
            mine[worker.worker_id] = (worker, task)
        for worker_id in active[target:]:
            mine[worker_id][0].request_stop()

    def sweep(self, pool_id: str, live: set[str], drain_limit: float) -> Sweep:
        mine = self.workers.get(pool_id, {})
        exited = [w for w, (_, task) in mine.items() if task.done()]
        for worker_id in exited:
            del mine[worker_id]
        return Sweep(exited=exited)

    def managed(self, pool_id: str) -> set[str]:
        return set(self.workers.get(pool_id, {}))

    def active(self, pool_id: str) -> set[str]:
        mine = self.workers.get(pool_id, {})
        return {w for w, (worker, _) in mine.items() if not worker._stopping.is_set()}

    def stop(self, pool_id: str) -> None:
        for worker, _ in self.workers.get(pool_id, {}).values():
            worker.request_stop()

    def kill(self, pool_id: str) -> None:
        for _, task in self.workers.get(pool_id, {}).values():
            task.cancel()

    def running(self, pool_id: str) -> int:
        return sum(1 for _, task in self.workers.get(pool_id, {}).values() if not task.done())

    def forget(self, pool_id: str) -> None:
        if not self.running(pool_id):
            self.workers.pop(pool_id, None)

    async def stop_all(self, grace: float) -> None:
        tasks = [task for mine in self.workers.values() for _, task in mine.values()]
        for pool_id in self.workers:
            self.stop(pool_id)
        if tasks:
            await asyncio.wait(tasks, timeout=grace)

    def describe(self, pool_id: str) -> dict[str, Any]:
        return {"backend": "in-process", "workers": sorted(self.workers.get(pool_id, {}))}

    def logs(self, pool_id: str, worker_id: str, tail: int) -> list[str]:
        return []


@pytest.fixture
async def with_backend(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Orchestrator]:
    monkeypatch.setitem(registry.BACKENDS, PoolType.KUBERNETES, InProcessBackend)
    orch = Orchestrator(settings, log_dir=tmp_path / "logs")
    task = asyncio.create_task(orch.run())
    await orch.wait_ready()
    yield orch
    orch.request_stop()
    await task


async def test_a_registered_backend_runs_pools_through_the_interface(
    with_backend: Orchestrator, manager: PoolManager
) -> None:
    pool_id = await manager.spawn_pool(
        "kubernetes", name="in-process", min_workers=1, max_workers=3
    )
    backend = with_backend.backends[PoolType.KUBERNETES]
    assert isinstance(backend, InProcessBackend)
    result = await manager.execute_on_pool(pool_id, {"call": "add", "args": [2, 3]})
    assert result.output == 5 and result.worker_id in backend.managed(pool_id)
    await manager.scale(pool_id, 3, wait=True)
    assert len(backend.active(pool_id)) == 3
    await manager.scale(pool_id, 1)

    async def one_left() -> bool:
        info = await manager.get_pool(pool_id)
        return info.load.workers == 1 and backend.running(pool_id) == 1

    await wait_until(one_left, timeout=20, what="the pool to shrink to one worker")
    with pytest.raises(PoolUnavailable, match="in-process pools run python only"):
        await manager.spawn_pool(
            "kubernetes", name="bad", worker_type="shell", allowed_commands=["ls"]
        )
    await manager.close_pool(pool_id, wait=True, timeout=30)
    assert backend.running(pool_id) == 0


async def test_an_unregistered_type_is_refused_at_spawn(
    orchestrator: Orchestrator, manager: PoolManager
) -> None:
    orchestrator.backends.pop(PoolType.KUBERNETES)  # as in a version without that backend
    with pytest.raises(PoolUnavailable, match="pool type kubernetes is not available yet"):
        await manager.spawn_pool("kubernetes", name="k")
