"""The `kubernetes` backend against the real API server, without an orchestrator: API errors as
pool errors naming what was wrong, a loop that never blocks on the API, and KEDA's ScaledObject
(validated with the cloudcoil KEDA models, applied through CRDs generated from them)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.orchestrator import Orchestrator
from orchestrator.pools.kubernetes import KubernetesBackend
from orchestrator.pools.kubernetes_api import KubeApi
from orchestrator.pools.kubernetes_manifests import KEDA_GROUP, KEDA_PLURAL, KEDA_VERSION
from shared.client import PoolManager
from shared.config import Settings
from shared.errors import PoolBackendError, PoolUnavailable
from shared.models import PoolSpec
from tests.conftest import wait_until
from tests.k8s import keda
from tests.k8s.conftest import Kube, kube_settings_for

pytestmark = pytest.mark.integration


def pool_spec(**fields: object) -> PoolSpec:
    return PoolSpec.model_validate({"name": "k", "pool_type": "kubernetes", **fields})


async def failure(backend: KubernetesBackend, spec: PoolSpec, target: int = 1) -> str:
    await backend.reconcile(spec, target)
    return backend.sweep(spec.id, set(), 30).failed


async def test_conflict_invalid_forbidden_and_not_found_are_pool_errors(
    kube: Kube, standalone_settings: Settings, namespace: str, tmp_path: Path
) -> None:
    backend = KubernetesBackend(standalone_settings)
    # 409: a Deployment of the pool's name that is not the pool's
    spec = pool_spec()
    kube.apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": f"mhv-{spec.id}", "labels": {"app": "other"}},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "other"}},
                "template": {
                    "metadata": {"labels": {"app": "other"}},
                    "spec": {"containers": [{"name": "c", "image": "other"}]},
                },
            },
        },
    )
    found = await failure(backend, spec)
    assert f"create Deployment mhv-{spec.id} in namespace {namespace}: 409 Conflict" in found
    assert "is not this pool's (its label mahavishnu.io/pool is None)" in found

    # 422: the API server refuses an invalid object, and says which field
    bad = pool_spec(
        options={"kubernetes": {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}}
    )
    found = await failure(backend, bad)
    assert ": 422 Unprocessable Entity: " in found, found
    assert "resources.requests: Invalid value" in found and "cpu limit" in found, found

    # 404: a namespace that does not exist
    lost = pool_spec(options={"kubernetes": {"namespace": "no-such-namespace"}})
    found = await failure(backend, lost)
    assert "404 Not Found" in found and 'namespaces "no-such-namespace" not found' in found

    # 403: an identity without rights (a token the API server knows, bound to no role)
    nobody = tmp_path / "nobody.kubeconfig"
    nobody.write_text(kube.plane.kubeconfig.read_text().replace(kube.plane.token, "nobody-token"))
    denied = KubernetesBackend(
        kube_settings_for(
            standalone_settings.key_prefix,
            standalone_settings.redis_url,
            kube,
            namespace,
            tmp_path,
            kube_config=nobody,
        )
    )
    found = await failure(denied, pool_spec())
    assert "403 Forbidden" in found and 'User "nobody" cannot create resource' in found, found

    # the client's own validation (kubernetes >= 37): an unknown field never reaches the server
    api = KubeApi(standalone_settings)
    with pytest.raises(PoolBackendError) as refused:
        await api.call(
            "create Deployment x",
            lambda k: k.apps().create_namespaced_deployment(
                namespace, {"metadata": {"name": "x", "replicaz": 2}, "spec": {}}
            ),
        )
    assert "refused by the client before sending" in str(refused.value)
    assert "metadata.replicaz: Extra inputs are not permitted" in str(refused.value)
    # ... and a spec whose Deployment would be invalid is refused at spawn, naming the field
    typo = pool_spec(options={"kubernetes": {"resources": {"limitz": {"cpu": "1"}}}})
    assert "resources.limitz: Extra inputs are not permitted" in backend.problem(typo)
    assert "options.kubernetes.replicas: Extra inputs" in backend.problem(
        pool_spec(options={"kubernetes": {"replicas": 3}})
    )


@pytest.fixture
def silent_server() -> Iterator[tuple[str, threading.Event]]:
    """A TCP server that accepts and says nothing until released: an API server stuck mid-call."""
    release = threading.Event()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []

    def serve() -> None:
        server.settimeout(0.1)
        while not release.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

        for conn in held:  # let go: the held calls fail, new ones are refused
            conn.close()
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.getsockname()[1]}", release
    release.set()
    thread.join(5)


async def test_api_calls_never_block_the_event_loop(
    kube: Kube,
    standalone_settings: Settings,
    namespace: str,
    tmp_path: Path,
    silent_server: tuple[str, threading.Event],
) -> None:
    url, release = silent_server
    stuck = tmp_path / "stuck.kubeconfig"
    stuck.write_text(kube.plane.kubeconfig.read_text().replace(kube.plane.url, url))
    settings = kube_settings_for(standalone_settings.key_prefix, standalone_settings.redis_url,
                                 kube, namespace, tmp_path, kube_config=stuck,
                                 kube_request_timeout=30.0)  # fmt: skip
    backend = KubernetesBackend(settings)
    ticks = 0
    ticked = asyncio.Event()

    async def timer() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1
            if ticks == 20:
                ticked.set()

    ticker = asyncio.create_task(timer())
    call = asyncio.create_task(backend.reconcile(pool_spec(), 1))
    await asyncio.wait_for(ticked.wait(), 20)  # 20 ticks while the API call hangs
    assert not call.done()
    release.set()  # the server lets go: the call fails as a retryable error, the pool lives on
    await asyncio.wait_for(call, 30)
    ticker.cancel()
    state = next(iter(backend.pools.values()))
    assert "API server unreachable" in state.transient, state.transient
    assert not state.error  # retried on the next tick, the pool is not failed

    # the real API server: its calls run in threads too, and the timer ticks through them
    ticks = 0
    ticker = asyncio.create_task(timer())
    real = KubernetesBackend(standalone_settings)
    spec = pool_spec(min_workers=0)
    for _ in range(5):
        await real.reconcile(spec, 0)
    ticker.cancel()
    assert ticks > 0 and not real.sweep(spec.id, set(), 30).failed


async def test_keda_scaled_object_streams_length_and_pool_scale_moves_its_bounds(
    kube: Kube, standalone_settings: Settings, namespace: str, tmp_path: Path
) -> None:
    orch = Orchestrator(standalone_settings, log_dir=tmp_path / "logs")
    running = asyncio.create_task(orch.run())
    await orch.wait_ready()
    try:
        async with PoolManager(standalone_settings) as pools:
            await keda_pool_scales_its_scaled_object(kube, standalone_settings, namespace, pools)
    finally:
        orch.request_stop()
        await running


async def keda_pool_scales_its_scaled_object(
    kube: Kube, settings: Settings, namespace: str, pools: PoolManager
) -> None:
    keda_options = {"kubernetes": {"keda": {"polling_interval": 3}}}
    pool_id = await pools.spawn_pool(
        "kubernetes", name="keda", min_workers=0, max_workers=5, concurrency=2,
        options=keda_options,
    )  # fmt: skip
    name = f"mhv-{pool_id}"

    def scaled_object() -> dict[str, Any]:
        found = kube.custom.get_namespaced_custom_object(
            KEDA_GROUP, KEDA_VERSION, namespace, KEDA_PLURAL, name
        )
        assert isinstance(found, dict)
        return found

    async def bounds_are(low: int, high: int) -> bool:
        found = await asyncio.to_thread(scaled_object)
        return (found["spec"]["minReplicaCount"], found["spec"]["maxReplicaCount"]) == (low, high)

    await pools.scale(pool_id, 1)
    await wait_until(lambda: bounds_are(1, 5), timeout=20, what="the ScaledObject at [1, 5]")
    found = scaled_object()
    parsed = keda.strictly_valid(
        {k: found[k] for k in ("apiVersion", "kind", "metadata", "spec")}
    )  # nothing was pruned: every field is known to the KEDA models
    trigger = found["spec"]["triggers"][0]
    assert trigger["type"] == "redis-streams"
    meta = trigger["metadata"]
    assert "consumerGroup" not in meta and meta["streamLength"] == "16"  # 2 x 8 per worker
    assert meta["stream"] == settings.keys.pool_tasks(pool_id)
    assert meta["addressFromEnv"] == "REDIS_ADDRESS" and meta["databaseIndex"] == "0"
    assert all(isinstance(v, str) for v in meta.values())
    assert parsed.spec.max_replica_count == 5  # type: ignore[attr-defined]
    dep = kube.apps.read_namespaced_deployment(name, namespace)
    env = {e.name for e in dep.spec.template.spec.containers[0].env}
    assert {"REDIS_ADDRESS", "REDIS_PASSWORD", "MAHAVISHNU_REDIS_URL", "POD_NAME"} <= env

    # while the ScaledObject exists, `pool scale` moves its bounds; the replicas are KEDA's
    kube.apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": 4}})
    await pools.scale(pool_id, 3)
    await wait_until(lambda: bounds_are(3, 5), timeout=20, what="the ScaledObject at [3, 5]")
    assert kube.apps.read_namespaced_deployment(name, namespace).spec.replicas == 4

    # closing deletes the ScaledObject, the Deployment and its pods
    await pools.close_pool(pool_id, wait=True, timeout=60)

    async def gone() -> bool:  # the API server removes what was deleted on its own time
        listed = kube.custom.list_namespaced_custom_object(
            KEDA_GROUP, KEDA_VERSION, namespace, KEDA_PLURAL
        )
        selector = f"mahavishnu.io/pool={pool_id}"
        pods = kube.core.list_namespaced_pod(namespace, label_selector=selector)
        return isinstance(listed, dict) and listed["items"] == [] and pods.items == []

    await wait_until(gone, timeout=30, what="the ScaledObject and the pods gone")


async def test_a_new_lease_holder_adopts_the_pools_deployment_and_scaled_object(
    kube: Kube, standalone_settings: Settings, namespace: str
) -> None:
    spec = pool_spec(min_workers=0, max_workers=4, options={"kubernetes": {"keda": {}}})
    first = KubernetesBackend(standalone_settings)
    await first.reconcile(spec, 1)
    assert not first.sweep(spec.id, set(), 30).failed
    # the orchestrator holding the lease died; another one takes the pool over
    second = KubernetesBackend(standalone_settings)
    await second.reconcile(spec, 2)
    assert not second.sweep(spec.id, set(), 30).failed
    found = kube.custom.get_namespaced_custom_object(
        KEDA_GROUP, KEDA_VERSION, namespace, KEDA_PLURAL, f"mhv-{spec.id}"
    )
    assert isinstance(found, dict) and found["spec"]["minReplicaCount"] == 2
    # deleted behind its back, the Deployment is made again on the next ticks
    before = kube.apps.read_namespaced_deployment(f"mhv-{spec.id}", namespace).metadata.uid
    kube.apps.delete_namespaced_deployment(f"mhv-{spec.id}", namespace)
    await second.reconcile(spec, 2)  # finds it gone
    await second.reconcile(spec, 2)  # makes it again
    assert not second.sweep(spec.id, set(), 30).failed
    again = kube.apps.read_namespaced_deployment(f"mhv-{spec.id}", namespace)
    assert again.metadata.uid != before


async def test_a_pool_the_api_refuses_fails_at_spawn_with_the_reason(
    standalone_settings: Settings, tmp_path: Path
) -> None:
    orch = Orchestrator(standalone_settings, log_dir=tmp_path / "logs")
    running = asyncio.create_task(orch.run())
    await orch.wait_ready()
    try:
        async with PoolManager(standalone_settings) as pools:
            with pytest.raises(PoolUnavailable) as failed:
                await pools.spawn_pool(
                    "kubernetes", name="lost",
                    options={"kubernetes": {"namespace": "no-such-namespace"}},
                )  # fmt: skip
            assert 'namespaces "no-such-namespace" not found' in str(failed.value)
            with pytest.raises(PoolUnavailable, match=r"keda\.cooldown_period"):
                await pools.spawn_pool(
                    "kubernetes",
                    name="bad",
                    options={"kubernetes": {"keda": {"cooldown_period": -1}}},
                )
    finally:
        orch.request_stop()
        await running


async def test_pods_that_cannot_start_fail_the_pool_with_the_kubelets_reason(
    kube: Kube, standalone_settings: Settings, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import orchestrator.pools.kubernetes as backend_module

    monkeypatch.setattr(backend_module, "START_GRACE", 0.0)  # instead of 30 s
    backend = KubernetesBackend(standalone_settings)
    spec = pool_spec(min_workers=0)
    await backend.reconcile(spec, 1)

    async def one_pod_running() -> bool:  # (marked so by the kubelet, which is then done)
        await backend.reconcile(spec, 1)
        pods = backend.pools[spec.id].pods
        return len(pods) == 1 and all(p.phase == "Running" for p in pods.values())

    await wait_until(one_pod_running, timeout=30, what="the pool's pod running")
    (pod,) = backend.managed(spec.id)
    waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "mahavishnu:test"'}
    status = {
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {"name": "worker", "image": "mahavishnu:test", "imageID": "", "ready": False,
                 "restartCount": 0, "state": {"waiting": waiting}}
            ],
        }
    }  # fmt: skip
    kube.core.patch_namespaced_pod_status(pod, namespace, status)
    await backend.reconcile(spec, 1)  # the pod is seen stuck
    await backend.reconcile(spec, 1)  # ... past the grace: the pool fails
    failed = backend.sweep(spec.id, set(), 30).failed
    assert failed == (
        f"workers cannot start: pod {pod}: ImagePullBackOff: "
        'Back-off pulling image "mahavishnu:test"'
    )
    healthy, problems = backend.health(spec.id)
    assert not healthy and any("ImagePullBackOff" in p for p in problems)
