"""The `arq` backend: bridge workers that run a pool's tasks as jobs on the team's own arq.

A bridge is a worker process of the pool (`python -m worker`) like a local pool's, so this
backend is the local one — start, watch, restart, scale and stop processes on this host — with
two differences: at spawn it checks that arq's virtual environment exists (the bridges need it,
`worker/arq_executor.py`), and it describes the arq queue the pool feeds. A bridge that cannot
reach the arq Redis at start exits with the reason; three such starts fail the pool with it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.pools.local import LocalBackend
from shared.arq_options import ArqOptions
from shared.config import Settings
from shared.errors import ExecutorError
from shared.models import PoolSpec
from worker.executors import build_executor


class ArqBackend(LocalBackend):
    """Bridge worker processes of `arq` pools on this host."""

    def __init__(
        self,
        settings: Settings,
        log_dir: Path,
        owner_id: str = "",
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(settings, log_dir, owner_id, on_exit)
        self._queues: dict[str, str] = {}  # pool id -> "queue @ host:port/db"

    def problem(self, spec: PoolSpec) -> str:
        """Why this host cannot run the pool's bridges ('' if it can)."""
        try:
            build_executor(spec, self.settings)
        except ExecutorError as exc:
            return f"arq pool {spec.name!r}: {exc}"
        return ""

    async def reconcile(self, spec: PoolSpec, target: int) -> None:
        """As for local pools; the queue is remembered for `describe`."""
        self._queues[spec.id] = ArqOptions.model_validate(spec.options).where
        await super().reconcile(spec, target)

    def forget(self, pool_id: str) -> None:
        super().forget(pool_id)
        if pool_id not in self.pools:
            self._queues.pop(pool_id, None)

    def describe(self, pool_id: str) -> dict[str, Any]:
        """The bridges' processes (as a local pool's) and the arq queue they feed."""
        return {**super().describe(pool_id), "backend": "arq", "arq": self._queues.get(pool_id)}
