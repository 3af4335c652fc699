"""What `mahavishnu pool logs` reads: the last lines a pool's workers wrote.

Kubernetes pools: the pods' logs, through the API server (any host with the kubeconfig).
Local pools: the workers' log files under the orchestrator's log folder on this host.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.pools.kubernetes_api import KubeApi, pod_logs
from orchestrator.pools.kubernetes_manifests import CONTAINER, pool_options, selector
from orchestrator.pools.local import _tail
from shared.config import Settings
from shared.errors import InvalidRequest
from shared.models import PoolSpec, PoolType

DEFAULT_LOG_DIR = Path(".mahavishnu/logs")  # the orchestrator's default (orchestrator.py)


async def read_pool_logs(
    settings: Settings,
    spec: PoolSpec,
    worker: str | None,
    tail: int,
    log_dir: Path = DEFAULT_LOG_DIR,
) -> dict[str, list[str]]:
    """Worker id -> its last `tail` lines, for one worker or every worker of the pool.

    InvalidRequest when the pool has no such worker or its type keeps no logs here.
    """
    if spec.pool_type is PoolType.KUBERNETES:
        api = KubeApi(settings)
        pool = pool_options(spec, settings)
        found = await api.call(
            f"list the pods of pool {spec.id} in namespace {pool.namespace}",
            lambda k: k.core().list_namespaced_pod(
                pool.namespace, label_selector=selector(pool), _request_timeout=k.timeout
            ),
        )
        names = sorted(p.metadata.name for p in found.items)
    elif spec.pool_type is PoolType.LOCAL:
        folder = log_dir / spec.id
        names = sorted(p.stem for p in folder.glob("*.log")) if folder.is_dir() else []
    else:
        raise InvalidRequest(f"pool {spec.id} is a {spec.pool_type} pool: no worker logs here")
    if worker is not None:
        if worker not in names:
            known = ", ".join(names) or "none"
            raise InvalidRequest(f"pool {spec.id} has no worker {worker!r} (its workers: {known})")
        names = [worker]
    if spec.pool_type is PoolType.KUBERNETES:
        return {n: await pod_logs(api, pool.namespace, n, CONTAINER, tail) for n in names}
    return {n: _tail(log_dir / spec.id / f"{n}.log", tail) for n in names}
