"""The `kubernetes` backend: a pool's workers are the pods of one Deployment.

Spawn creates the Deployment (and the ScaledObject, with `options.kubernetes.keda`); each tick
the pool's target goes to `spec.replicas` — or, while KEDA owns the replicas, to the
ScaledObject's `minReplicaCount` (its max stays the pool's `max_workers`) — and the pods are
listed. The pods are the pool's managed workers (worker id = pod name), so the supervisor
counts their heartbeats as its own; a pod that disappears is an exited worker, a container
restart is reported as a restart, and a pod that cannot start its container (bad image, missing
Secret, crash loop) for `START_GRACE` seconds while no pod ever heartbeat fails the pool with
the kubelet's reason. Closing deletes the ScaledObject and the Deployment; the pods are gone once
their graceful deletion (SIGTERM: the worker drains) ends, and `kill` deletes stragglers at once.

Every API call runs off the event loop (`kubernetes_api`). The sync methods of the interface
only read what the last call found; `stop` and `kill` start their calls as tasks. An
orchestrator that stops leaves the Deployments running: they belong to the cluster, and the
orchestrator that takes over the pool's lease adopts its Deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.pools.base import PoolBackend, Sweep
from orchestrator.pools.kubernetes_api import TRANSIENT, KubeApi
from orchestrator.pools.kubernetes_manifests import (
    CONTAINER,
    KEDA_GROUP,
    KEDA_PLURAL,
    KEDA_VERSION,
    POOL_LABEL,
    KubePool,
    deployment,
    pool_options,
    scaled_object,
    selector,
)
from shared.config import Settings
from shared.errors import PoolBackendError
from shared.models import PoolSpec

log = logging.getLogger("mahavishnu.orchestrator.kubernetes")

START_GRACE = 30.0  # seconds a pod may fail to start its container before the pool fails
STUCK_REASONS = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
}


@dataclass
class Pod:
    """What the last listing said of one pod."""

    name: str
    phase: str
    ready: bool
    deleting: bool
    restarts: int
    waiting: str  # "Reason: message" of a container that cannot start, else ""


@dataclass
class PoolState:
    """What this backend knows of one pool's objects."""

    pool: KubePool
    spec: PoolSpec
    created: bool = False
    replicas: int | None = None  # what spec.replicas was last set to
    bounds: tuple[int, int] | None = None  # the ScaledObject's (min, max), last set
    deployment: dict[str, int] = field(default_factory=dict)
    pods: dict[str, Pod] = field(default_factory=dict)
    gone: list[str] = field(default_factory=list)
    restart_reason: str = ""
    error: str = ""  # a permanent API error: the pool fails with it
    transient: str = ""  # the last retryable API error
    stuck_since: float = 0.0
    ever_heartbeat: bool = False
    live: set[str] = field(default_factory=set)  # pods whose worker heartbeat was live
    closing: bool = False
    deleted: bool = False
    task: asyncio.Task[None] | None = None


class KubernetesBackend(PoolBackend):
    """Deployments of worker pods for the pools this orchestrator holds the leases of."""

    def __init__(
        self,
        settings: Settings,
        log_dir: Path | None = None,
        owner_id: str = "",
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.owner_id = owner_id
        self.wake = wake
        self.api = KubeApi(settings)
        self.pools: dict[str, PoolState] = {}

    # ------------------------------------------------------------------ API steps

    async def _ensure(self, state: PoolState, target: int) -> None:
        """Create the Deployment (and ScaledObject), or adopt this pool's existing ones."""
        pool, spec = state.pool, state.spec
        body = deployment(pool, spec, self.settings, target)
        what = f"create Deployment {pool.name} in namespace {pool.namespace}"
        try:
            await self.api.call(
                what,
                lambda k: k.apps().create_namespaced_deployment(
                    pool.namespace, body, _request_timeout=k.timeout
                ),
            )
            state.replicas = target
        except PoolBackendError as exc:
            if exc.status != 409:
                raise
            found = await self.api.call(
                f"read Deployment {pool.name} in namespace {pool.namespace}",
                lambda k: k.apps().read_namespaced_deployment(
                    pool.name, pool.namespace, _request_timeout=k.timeout
                ),
            )
            owner = (found.metadata.labels or {}).get(POOL_LABEL)
            if owner != spec.id:
                raise PoolBackendError(
                    f"kubernetes: {what}: 409 Conflict: a Deployment of that name exists and "
                    f"is not this pool's (its label {POOL_LABEL} is {owner!r})",
                    409,
                ) from None
            state.replicas = found.spec.replicas
            log.info("pool %s: adopted Deployment %s", spec.id, pool.name)
        state.created = True

    async def _set_keda_bounds(self, state: PoolState, low: int, high: int) -> None:
        pool = state.pool
        what = f"ScaledObject {pool.name} in namespace {pool.namespace}"
        if state.bounds is None:  # create it, or take over the one that exists
            body = scaled_object(pool, state.spec, self.settings, low, high)
            try:
                await self.api.call(
                    f"create {what}",
                    lambda k: k.custom().create_namespaced_custom_object(
                        KEDA_GROUP, KEDA_VERSION, pool.namespace, KEDA_PLURAL, body,
                        _request_timeout=k.timeout,
                    ),
                )  # fmt: skip
                state.bounds = (low, high)
                return
            except PoolBackendError as exc:
                if exc.status != 409:
                    raise
        patch = {"spec": {"minReplicaCount": low, "maxReplicaCount": high}}
        await self.api.call(
            f"patch {what}",
            lambda k: k.custom().patch_namespaced_custom_object(
                KEDA_GROUP, KEDA_VERSION, pool.namespace, KEDA_PLURAL, pool.name, patch,
                _request_timeout=k.timeout,
            ),
        )  # fmt: skip
        state.bounds = (low, high)

    async def _set_replicas(self, state: PoolState, target: int) -> None:
        pool = state.pool
        patch = {"spec": {"replicas": target}}
        try:
            await self.api.call(
                f"scale Deployment {pool.name} in namespace {pool.namespace} to {target}",
                lambda k: k.apps().patch_namespaced_deployment_scale(
                    pool.name, pool.namespace, patch, _request_timeout=k.timeout
                ),
            )
        except PoolBackendError as exc:
            if exc.status != 404:
                raise
            self._lost(state)
            return
        state.replicas = target

    @staticmethod
    def _lost(state: PoolState) -> None:
        """The Deployment was deleted behind our back: the next tick makes it again."""
        log.warning(
            "pool %s: Deployment %s is gone: making it again", state.spec.id, state.pool.name
        )
        state.created, state.replicas, state.bounds, state.deployment = False, None, None, {}

    async def _refresh(self, state: PoolState) -> None:
        """List the pool's pods; note the ones gone, restarted, or unable to start."""
        pool = state.pool
        found = await self.api.call(
            f"list the pods of pool {pool.pool_id} in namespace {pool.namespace}",
            lambda k: k.core().list_namespaced_pod(
                pool.namespace, label_selector=selector(pool), _request_timeout=k.timeout
            ),
        )
        listed = (_pod(p) for p in found.items)  # a Failed or Succeeded pod is no worker
        pods = {p.name: p for p in listed if p.phase not in ("Failed", "Succeeded")}
        if state.created and not state.deleted:
            try:
                dep = await self.api.call(
                    f"read Deployment {pool.name} in namespace {pool.namespace}",
                    lambda k: k.apps().read_namespaced_deployment_status(
                        pool.name, pool.namespace, _request_timeout=k.timeout
                    ),
                )
            except PoolBackendError as exc:
                if exc.status != 404:
                    raise
                self._lost(state)
                return
            st = dep.status
            state.deployment = {
                "replicas": dep.spec.replicas or 0,
                "ready": st.ready_replicas or 0,
                "available": st.available_replicas or 0,
                "updated": st.updated_replicas or 0,
            }
        for name, old in state.pods.items():
            new = pods.get(name)
            if new is None:
                state.gone.append(name)
            elif new.restarts > old.restarts:
                state.restart_reason = f"pod {name}: its container restarted ({new.restarts})"
        state.pods = pods
        stuck = [f"pod {p.name}: {p.waiting}" for p in pods.values() if p.waiting]
        if not stuck or state.ever_heartbeat:
            state.stuck_since = 0.0
        elif not state.stuck_since:
            state.stuck_since = time.monotonic()
        elif time.monotonic() - state.stuck_since >= START_GRACE:
            state.error = f"workers cannot start: {stuck[0]}"

    async def _close(self, state: PoolState) -> None:
        """Delete the ScaledObject and the Deployment (once), then list what is left."""
        pool = state.pool
        if not state.deleted:
            if pool.options.keda is not None:
                with contextlib.suppress(PoolBackendError):  # 404: never made or gone
                    await self.api.call(
                        f"delete ScaledObject {pool.name}",
                        lambda k: k.custom().delete_namespaced_custom_object(
                            KEDA_GROUP, KEDA_VERSION, pool.namespace, KEDA_PLURAL, pool.name,
                            _request_timeout=k.timeout,
                        ),
                    )  # fmt: skip
            try:
                await self.api.call(
                    f"delete Deployment {pool.name} in namespace {pool.namespace}",
                    lambda k: k.apps().delete_namespaced_deployment(
                        pool.name, pool.namespace, propagation_policy="Background",
                        _request_timeout=k.timeout,
                    ),
                )  # fmt: skip
            except PoolBackendError as exc:
                if exc.status != 404:
                    raise
            state.deleted = True
        await self._refresh(state)

    async def _kill(self, state: PoolState) -> None:
        pool = state.pool
        for name in list(state.pods):
            with contextlib.suppress(PoolBackendError):
                await self.api.call(
                    f"delete pod {name}",
                    lambda k, n=name: k.core().delete_namespaced_pod(  # type: ignore[misc]
                        n, pool.namespace, grace_period_seconds=0, _request_timeout=k.timeout
                    ),
                )
        await self._refresh(state)

    def _background(
        self, state: PoolState, step: Callable[[PoolState], Coroutine[Any, Any, None]]
    ) -> None:
        """Run an API step as a task (from a sync method) unless one still runs."""
        if state.task is not None and not state.task.done():
            return

        async def run() -> None:
            try:
                await step(state)
            except PoolBackendError as exc:
                log.warning("pool %s: %s", state.spec.id, exc)
            if self.wake is not None:
                self.wake()

        state.task = asyncio.get_running_loop().create_task(run())

    # ------------------------------------------------------------------ PoolBackend

    def problem(self, spec: PoolSpec) -> str:
        """Why the pool cannot run on Kubernetes ('' if it can): its options, its id, and its
        Deployment as the client would send it (no API call)."""
        try:
            import kubernetes  # noqa: F401
        except ImportError:
            return (
                "kubernetes pools need the 'kubernetes' package: "
                "pip install 'mahavishnu-pools[kubernetes]'"
            )
        from kubernetes.client import V1Deployment
        from pydantic import ValidationError

        try:
            pool = pool_options(spec, self.settings)
            if pool.options.keda is not None and spec.auto_scale:
                return "auto_scale and options.kubernetes.keda both scale the pool: choose one"
            V1Deployment.model_validate(deployment(pool, spec, self.settings, spec.min_workers))
        except ValueError as exc:
            if isinstance(exc, ValidationError):
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                return f"the pool's Deployment would be invalid: {where}: {first['msg']}"
            return str(exc)
        return ""

    def state(self, spec: PoolSpec) -> PoolState:
        known = self.pools.get(spec.id)
        if known is None:
            known = self.pools[spec.id] = PoolState(pool_options(spec, self.settings), spec)
        return known

    async def reconcile(self, spec: PoolSpec, target: int) -> None:
        """Create or adopt the Deployment, set its replicas (or the ScaledObject's min/max),
        and list its pods. A permanent API error fails the pool on the next sweep."""
        state = self.state(spec)
        if state.error or state.closing:
            return
        try:
            if not state.created:
                await self._ensure(state, target)
            if state.pool.options.keda is not None:
                if state.bounds != (target, spec.max_workers):
                    await self._set_keda_bounds(state, target, spec.max_workers)
            elif state.replicas != target:
                await self._set_replicas(state, target)
            await self._refresh(state)
            state.transient = ""
        except PoolBackendError as exc:
            if exc.status in TRANSIENT:
                if str(exc) != state.transient:
                    log.warning("pool %s: %s (retrying)", spec.id, exc)
                state.transient = str(exc)
            else:
                state.error = str(exc)

    def sweep(self, pool_id: str, live: set[str], drain_limit: float) -> Sweep:
        """Pods gone since the last listing, container restarts, and a permanent error."""
        state = self.pools.get(pool_id)
        if state is None:
            return Sweep()
        state.live = live & set(state.pods)
        if state.live:
            state.ever_heartbeat = True
        found = Sweep(exited=state.gone, restart_reason=state.restart_reason, failed=state.error)
        state.gone, state.restart_reason = [], ""
        return found

    def managed(self, pool_id: str) -> set[str]:
        state = self.pools.get(pool_id)
        return set(state.pods) if state else set()

    def active(self, pool_id: str) -> set[str]:
        state = self.pools.get(pool_id)
        return {p.name for p in state.pods.values() if not p.deleting} if state else set()

    def stop(self, pool_id: str) -> None:
        """Delete the pool's Deployment: its pods get SIGTERM and drain (a task; each call
        also lists the pods still there, for `running`)."""
        state = self.pools.get(pool_id)
        if state is not None:
            state.closing = True
            self._background(state, self._close)

    def kill(self, pool_id: str) -> None:
        state = self.pools.get(pool_id)
        if state is not None and state.pods:
            self._background(state, self._kill)

    def running(self, pool_id: str) -> int:
        state = self.pools.get(pool_id)
        return len(state.pods) if state else 0

    def forget(self, pool_id: str) -> None:
        if not self.running(pool_id):
            self.pools.pop(pool_id, None)

    async def stop_all(self, grace: float) -> None:
        """Leave the Deployments running (the next lease holder adopts them); finish the API
        calls under way."""
        tasks = [s.task for s in self.pools.values() if s.task is not None and not s.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)

    def health(self, pool_id: str) -> tuple[bool, list[str]]:
        """Whether the pool is healthy, from the Deployment's and the pods' status and the
        pods' worker heartbeats (as of the last tick), with what is wrong."""
        state = self.pools.get(pool_id)
        if state is None:
            return False, [f"pool {pool_id} is not supervised here"]
        problems = [state.error or state.transient] if state.error or state.transient else []
        dep = state.deployment
        if dep and dep["ready"] < dep["replicas"]:
            problems.append(f"Deployment {state.pool.name}: {dep['ready']}/{dep['replicas']} ready")
        for pod in state.pods.values():
            if pod.deleting:
                continue
            if pod.waiting:
                problems.append(f"pod {pod.name}: {pod.waiting}")
            elif pod.phase != "Running" or not pod.ready:
                problems.append(f"pod {pod.name}: {pod.phase}, {'' if pod.ready else 'not '}ready")
            elif pod.name not in state.live:
                problems.append(f"pod {pod.name}: running, but its worker has no live heartbeat")
        return not problems, problems

    def describe(self, pool_id: str) -> dict[str, Any]:
        """The Deployment and its pods as last listed, with the pool's health."""
        state = self.pools.get(pool_id)
        if state is None:
            return {"backend": "kubernetes", "pods": []}
        pool = state.pool
        healthy, problems = self.health(pool_id)
        return {
            "backend": "kubernetes",
            "namespace": pool.namespace,
            "deployment": pool.name,
            "status": state.deployment,
            "keda": {"min": state.bounds[0], "max": state.bounds[1]} if state.bounds else None,
            "pods": [
                {**p.__dict__, "heartbeat": p.name in state.live} for p in state.pods.values()
            ],
            "healthy": healthy,
            "problems": problems,
        }

    def logs(self, pool_id: str, worker_id: str, tail: int) -> list[str]:
        """A pod's last log lines (a blocking API call: async callers use `read_logs`)."""
        state = self.pools.get(pool_id)
        if state is None or worker_id not in state.pods:
            return []
        namespace = state.pool.namespace
        text = self.api.call_sync(
            f"read the log of pod {worker_id}",
            lambda k: k.core().read_namespaced_pod_log(
                worker_id, namespace, container=CONTAINER, tail_lines=tail,
                _request_timeout=k.timeout,
            ),
        )  # fmt: skip
        return [line for line in str(text).splitlines() if line.strip()][-tail:]


def _pod(obj: Any) -> Pod:
    status = obj.status
    ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])
    restarts = sum(c.restart_count or 0 for c in status.container_statuses or [])
    waiting = ""
    for c in status.container_statuses or []:
        reason = c.state.waiting.reason if c.state and c.state.waiting else None
        if reason in STUCK_REASONS:
            waiting = f"{reason}: {c.state.waiting.message or ''}".rstrip(": ")
    return Pod(
        name=obj.metadata.name,
        phase=status.phase or "Pending",
        ready=ready,
        deleting=obj.metadata.deletion_timestamp is not None,
        restarts=restarts,
        waiting=waiting,
    )
