"""A `kubernetes` pool end to end on a real API server: an orchestrator spawns it as a
Deployment, the controllers make its pods, the fake kubelet runs each pod's container as a real
`python -m worker` process; tasks run, the pool scales up, to zero and back, its logs are read
with `mahavishnu pool logs`, its health follows the pods and their heartbeats, and closing it
removes the Deployment and its pods."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from orchestrator.orchestrator import Orchestrator
from orchestrator.pools.kubernetes import KubernetesBackend
from shared.client import PoolManager
from shared.config import Settings, settings_env
from shared.models import PoolStatus, PoolType
from tests.conftest import wait_until
from tests.k8s.conftest import Kube

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("mahavishnu"))


@pytest.fixture
async def orchestrator_k8s(kube_settings: Settings, tmp_path: Path) -> AsyncIterator[Orchestrator]:
    orch = Orchestrator(kube_settings, log_dir=tmp_path / "logs")
    task = asyncio.create_task(orch.run())
    await orch.wait_ready()
    yield orch
    orch.request_stop()
    await task


def pod_names(kube: Kube, namespace: str, pool_id: str) -> list[str]:
    pods = kube.core.list_namespaced_pod(namespace, label_selector=f"mahavishnu.io/pool={pool_id}")
    return sorted(p.metadata.name for p in pods.items)


async def wait_pods(kube: Kube, namespace: str, pool_id: str, count: int) -> list[str]:
    async def settled() -> bool:
        return len(await asyncio.to_thread(pod_names, kube, namespace, pool_id)) == count

    await wait_until(settled, timeout=60, what=f"{count} pod(s) of pool {pool_id}")
    return await asyncio.to_thread(pod_names, kube, namespace, pool_id)


async def cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAHAVISHNU_")}
    env.update(settings_env(settings))
    env["MAHAVISHNU_SETTINGS_DIR"] = os.environ.get("MAHAVISHNU_SETTINGS_DIR", "/nonexistent")
    proc = await asyncio.create_subprocess_exec(
        CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_pool_runs_scales_logs_and_closes(
    kube: Kube, kube_settings: Settings, namespace: str, orchestrator_k8s: Orchestrator
) -> None:
    backend = orchestrator_k8s.backends[PoolType.KUBERNETES]
    assert isinstance(backend, KubernetesBackend)
    pool_id = f"k-{os.urandom(3).hex()}"
    options = '{"kubernetes": {"resources": {"requests": {"cpu": "100m"}}}}'
    code, out, err = await cli(
        kube_settings, "pool", "spawn", "--id", pool_id, "--name", "k8s", "--type", "k8s",
        "--min-workers", "0", "--max-workers", "3", "--options", options, "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["pool_id"] == pool_id
    async with PoolManager(kube_settings) as pools:
        await pools.scale(pool_id, 2, wait=True)  # RUNNING: two pods whose workers heartbeat
        dep = kube.apps.read_namespaced_deployment(f"mhv-{pool_id}", namespace)
        assert dep.spec.replicas == 2
        container = dep.spec.template.spec.containers[0]
        assert container.resources.requests == {"cpu": "100m"}
        await wait_until(
            lambda: _ready(kube, namespace, pool_id, 2), timeout=30, what="2 ready replicas"
        )
        pods = await wait_pods(kube, namespace, pool_id, 2)
        assert backend.managed(pool_id) == set(pods)
        result = await pools.execute_on_pool(pool_id, {"prompt": "hello pods"}, timeout=30)
        assert result.status == "completed" and result.worker_id in pods

        async def healthy() -> bool:
            return bool(backend.describe(pool_id)["healthy"])

        await wait_until(healthy, timeout=15, what="a healthy pool")
        # a worker that stops heartbeating (SIGSTOP) makes the pool unhealthy, naming its pod
        stopped = pods[0]
        proc = kube.kubelet.containers[f"{namespace}/{stopped}"].process
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)
        try:

            async def unhealthy() -> bool:
                return any(
                    stopped in p and "no live heartbeat" in p
                    for p in backend.describe(pool_id)["problems"]
                )

            await wait_until(unhealthy, timeout=15, what="the stopped worker's heartbeat to lapse")
        finally:
            proc.send_signal(signal.SIGCONT)
        await wait_until(healthy, timeout=15, what="the pool healthy again")

        # a worker that dies is restarted by the kubelet; the pool records the restart
        proc.kill()

        async def restarted() -> bool:
            info = await pools.get_pool(pool_id)
            return info.restarts >= 1 and stopped in info.last_restart_reason

        await wait_until(restarted, timeout=20, what="the restart to be recorded")
        assert "its container restarted" in (await pools.get_pool(pool_id)).last_restart_reason
        await wait_until(healthy, timeout=20, what="the restarted worker heartbeating")

        code, out, err = await cli(
            kube_settings, "pool", "logs", pool_id, "--worker", stopped, "--tail", "3"
        )
        assert code == 0, err
        lines = out.strip().splitlines()
        assert 1 <= len(lines) <= 3 and any("worker" in line for line in lines), out
        code, out, err = await cli(kube_settings, "pool", "logs", pool_id, "--worker", "nope")
        assert code == 1 and f"pool {pool_id} has no worker 'nope'" in err, err

        await pools.scale(pool_id, 3, wait=True)
        await wait_pods(kube, namespace, pool_id, 3)
        await pools.scale(pool_id, 0, wait=True)
        await wait_pods(kube, namespace, pool_id, 0)  # drained and gone
        await pools.scale(pool_id, 1, wait=True)
        await wait_pods(kube, namespace, pool_id, 1)

        await pools.close_pool(pool_id, wait=True, timeout=60)
        assert (await pools.get_pool(pool_id)).status is PoolStatus.CLOSED
    with pytest.raises(ApiException) as gone:
        kube.apps.read_namespaced_deployment(f"mhv-{pool_id}", namespace)
    assert gone.value.status == 404
    assert pod_names(kube, namespace, pool_id) == []


async def _ready(kube: Kube, namespace: str, pool_id: str, count: int) -> bool:
    dep: Any = await asyncio.to_thread(
        kube.apps.read_namespaced_deployment_status, f"mhv-{pool_id}", namespace
    )
    return bool(dep.status.ready_replicas == count)
