"""`delegated` pools (alias `session-buddy`): bridges that forward a pool's tasks to a remote MCP
server (README.md, "Delegated pools").

A bridge is a worker process of the pool whose executor is a `RemoteExecutor`
(orchestrator/pools/delegated_executor.py): it consumes the pool's stream like any worker, so
acknowledgement, retries with backoff, dead letters, reclaim and drain are the worker's. This
backend supervises those processes exactly as the local backend supervises workers (it is a
`LocalBackend`) and adds what concerns the remote:

- at spawn, before any bridge starts, it connects (initialize), checks the token and that the
  remote lists the tools its kind needs (`tools/list`: MCP's ping is gone from the 2026
  protocol) and, for Session-Buddy, creates the remote pool (`create_pool`). A problem fails
  the pool with the reason (naming the pool and the remote), which is what `pool spawn` reports;
- while the pool runs it probes the remote every `health_interval` (a new session: initialize +
  `tools/list`; Session-Buddy also `check_pool_health`, re-creating a pool the remote lost). A
  remote that does not answer makes the pool `degraded` with the reason; its bridges keep their
  tasks and wait for it, and the pool is `running` again once it answers;
- the outcome of the last probe is in the pool hash (`remote_health`: 'ok' or the reason,
  `remote_checked_at`), which `pool list` shows with the remote's URL;
- when the pool closes, a Session-Buddy remote pool is deleted (`delete_pool`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from orchestrator.pools.base import Sweep
from orchestrator.pools.delegated_remote import (
    check_remote,
    delete_remote_pool,
    remote_of,
    remote_pool_id,
    where,
)
from orchestrator.pools.local import LocalBackend
from shared.config import Settings, redact_url
from shared.connection import Fields, Redis, connect
from shared.models import PoolSpec
from shared.remote_config import RemoteKind

log = logging.getLogger("mahavishnu.delegated")

HEALTH_OK = "ok"


class DelegatedBackend(LocalBackend):
    """Bridge processes for the delegated pools this orchestrator holds the leases of."""

    def __init__(
        self,
        settings: Settings,
        log_dir: Path,
        owner_id: str = "",
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(settings, log_dir, owner_id, on_exit)
        self._redis: Redis | None = None
        self._prepared: set[str] = set()
        self._preparing: dict[str, asyncio.Task[None]] = {}
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._failed: dict[str, str] = {}
        self._health: dict[str, str] = {}  # pool -> '' (answers) or why not
        self._specs: dict[str, PoolSpec] = {}
        self._chores: set[asyncio.Task[None]] = set()
        # the SDK can turn a cancel into an error (a session being opened), so the probes
        # also stop on this flag and on their pool leaving `_probes`
        self._stopping = False
        logging.getLogger("httpx2").setLevel(logging.WARNING)  # not a line per probe request

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            self._redis = connect(self.settings)
        return self._redis

    def _wake(self) -> None:
        if self.on_exit is not None:
            self.on_exit()

    # ------------------------------------------------------------ PoolBackend

    def problem(self, spec: PoolSpec) -> str:
        """What can be known without the network: the remote is given and its token readable."""
        if spec.remote is None:
            return f"pool {spec.id}: a delegated pool needs a remote (url and kind)"
        try:
            spec.remote.token()
        except ValueError as exc:
            return f"{where(spec)}: {exc} on the orchestrator's host"
        return ""

    async def reconcile(self, spec: PoolSpec, target: int) -> None:
        """Check (and prepare) the remote first; then start or stop bridges like workers."""
        pool_id = spec.id
        self._specs[pool_id] = spec
        if pool_id in self._failed:
            return
        if pool_id not in self._prepared:
            if pool_id not in self._preparing:
                self._preparing[pool_id] = self._spawn(self._prepare(spec), f"prepare-{pool_id}")
            return
        if pool_id not in self._probes:
            self._probes[pool_id] = self._spawn(self._probe_loop(spec), f"probe-{pool_id}")
        await super().reconcile(spec, target)

    def sweep(self, pool_id: str, live: set[str], drain_limit: float) -> Sweep:
        found = super().sweep(pool_id, live, drain_limit)
        if pool_id in self._failed:
            found.failed = self._failed[pool_id]
        elif pool_id in self._prepared and self._health.get(pool_id):
            found.degraded = f"remote does not answer: {self._health[pool_id]}"
        return found

    def stop(self, pool_id: str) -> None:
        super().stop(pool_id)
        probe = self._probes.pop(pool_id, None)
        if probe is not None:
            probe.cancel()

    def forget(self, pool_id: str) -> None:
        super().forget(pool_id)
        if pool_id in self.pools:  # bridges still run
            return
        spec = self._specs.pop(pool_id, None)
        was_prepared = pool_id in self._prepared
        for table in (self._failed, self._health):
            table.pop(pool_id, None)
        self._prepared.discard(pool_id)
        for tasks in (self._preparing, self._probes):
            task = tasks.pop(pool_id, None)
            if task is not None:
                task.cancel()
        if spec is not None and was_prepared and remote_of(spec).kind is RemoteKind.SESSION_BUDDY:
            self._spawn(delete_remote_pool(spec), f"delete-{pool_id}")

    async def stop_all(self, grace: float) -> None:
        self._stopping = True
        for task in [*self._preparing.values(), *self._probes.values()]:
            task.cancel()
        await super().stop_all(grace)
        if self._chores:  # probes ending, a remote pool being deleted
            await asyncio.wait(list(self._chores), timeout=10)
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def describe(self, pool_id: str) -> dict[str, Any]:
        described = super().describe(pool_id)
        described["backend"] = "delegated"
        spec = self._specs.get(pool_id)
        if spec is not None and spec.remote is not None:
            described["remote"] = {
                "url": redact_url(spec.remote.url),
                "kind": str(spec.remote.kind),
                "health": self._health.get(pool_id, "") or HEALTH_OK,
                "failed": self._failed.get(pool_id, ""),
            }
        return described

    # --------------------------------------------------------------- the remote

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)
        return task

    async def _prepare(self, spec: PoolSpec) -> None:
        """Check the remote before the first bridge starts; a new pool whose remote fails the
        check fails. A pool that ran before (adopted after an orchestrator restart) is only
        degraded: its remote may come back."""
        pool_id = spec.id
        try:
            problem = await self._check(spec, prepare=True)
            if self._stopping:
                return
            key = self.settings.keys.pool(pool_id)
            ran_before = bool(await self.redis.hexists(key, "remote_checked_at"))
            if problem and not ran_before:
                log.warning("%s", problem)
                self._failed[pool_id] = problem
                return
            self._health[pool_id] = problem
            await self._record(spec, problem)
            self._prepared.add(pool_id)
        except RedisError as exc:
            log.warning("%s: could not record the remote's state: %s", where(spec), exc)
        finally:
            self._preparing.pop(pool_id, None)
            self._wake()

    async def _check(self, spec: PoolSpec, *, prepare: bool) -> str:
        """`check_remote`, where a cancel that nobody here asked for is a lost session: the
        SDK's task group cancels the task that opened it when its server goes away."""
        try:
            return await check_remote(spec, prepare=prepare)
        except asyncio.CancelledError:
            if self._stopping or (not prepare and spec.id not in self._probes):
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return f"{where(spec)}: the remote dropped the session"

    async def _record(self, spec: PoolSpec, problem: str) -> None:
        fields: Fields = {
            "remote_url": redact_url(remote_of(spec).url),
            "remote_kind": str(remote_of(spec).kind),
            "remote_health": problem or HEALTH_OK,
            "remote_checked_at": repr(time.time()),
        }
        if remote_of(spec).kind is RemoteKind.SESSION_BUDDY:
            fields["remote_pool_id"] = remote_pool_id(spec)
        await self.redis.hset(self.settings.keys.pool(spec.id), mapping=fields)

    async def _probe_loop(self, spec: PoolSpec) -> None:
        """Probe the remote every `health_interval` s; record and report changes at once."""
        pool_id = spec.id
        while not self._stopping and pool_id in self._probes:
            await asyncio.sleep(remote_of(spec).health_interval)
            problem = await self._check(spec, prepare=False)
            if self._stopping or pool_id not in self._probes:
                return
            changed = problem != self._health.get(pool_id, "")
            self._health[pool_id] = problem
            if changed:
                if problem:
                    log.warning("%s: degraded: %s", where(spec), problem)
                else:
                    log.info("%s: the remote answers again", where(spec))
                self._wake()
            with contextlib.suppress(RedisError):
                await self._record(spec, problem)
