"""Fixtures of the Kubernetes tests: one real control plane and fake kubelet for the session,
KEDA's CRDs installed from the cloudcoil models, and a fresh namespace per test."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client, config

from shared.config import Settings
from tests.conftest import REDIS_URL, delete_prefix, make_settings
from tests.k8s import keda
from tests.k8s.cluster import ControlPlane, binaries_missing, start_control_plane
from tests.k8s.fake_kubelet import FakeKubelet

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBECTL = str(Path(sys.executable).with_name("kubectl"))


@dataclass
class Kube:
    plane: ControlPlane
    api: client.ApiClient
    kubelet: FakeKubelet

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [KUBECTL, "--kubeconfig", str(self.plane.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done.stdout


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """etcd + kube-apiserver + controller manager + scheduler + fake kubelet, with KEDA's CRDs."""
    why = binaries_missing()
    if why:
        pytest.fail(f"cannot start the test control plane: {why} (make test builds them)")
    folder = tmp_path_factory.mktemp("kube")
    plane = start_control_plane(folder / "plane")
    try:
        yield from _with_kubelet(plane, folder)
    finally:
        plane.stop()


def _with_kubelet(plane: ControlPlane, folder: Path) -> Iterator[Kube]:
    api = config.new_client_from_config(config_file=str(plane.kubeconfig))
    host_env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/"),
        "PYTHONPATH": str(REPO_ROOT),
        "MAHAVISHNU_SETTINGS_DIR": str(folder / "no-settings"),
    }
    kubelet = FakeKubelet(api, folder / "kubelet", host_env, set())
    found = Kube(plane, api, kubelet)
    try:
        kubelet.start()
        crds = [keda.crd(kind) for kind in keda.KINDS]
        found.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(c) for c in crds))
        found.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                      *(f"crd/{c['metadata']['name']}" for c in crds))  # fmt: skip
        yield found
    finally:
        kubelet.stop()
        api.close()


def make_namespace(kube: Kube, name: str | None = None, run: bool = True) -> str:
    """A namespace with the workers' service account; its worker pods really run if `run`."""
    ns = name or f"t-{os.urandom(4).hex()}"
    kube.core.create_namespace({"metadata": {"name": ns}})
    kube.core.create_namespaced_service_account(ns, {"metadata": {"name": "mahavishnu-worker"}})
    if run:
        kube.kubelet.run_namespaces.add(ns)
    return ns


def redis_secret(kube: Kube, namespace: str, redis_url: str) -> None:
    """The Secret the pods take the Redis URL (and KEDA the address) from."""
    hosts = urlsplit(redis_url).netloc.rpartition("@")[2]  # a cluster URL lists several
    data = {"url": redis_url, "address": hosts}
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    kube.core.create_namespaced_secret(
        namespace, {"metadata": {"name": "mahavishnu-redis"}, "data": encoded}
    )


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    ns = make_namespace(kube)
    yield ns
    kube.core.delete_namespace(ns)


@pytest.fixture
def kube_settings(settings: Settings, kube: Kube, namespace: str, tmp_path: Path) -> Settings:
    """The test's settings (either broker) pointed at the test API server and namespace."""
    redis_secret(kube, namespace, settings.redis_url)
    return kube_settings_for(settings.key_prefix, settings.redis_url, kube, namespace, tmp_path)


def kube_settings_for(
    prefix: str, redis_url: str, kube: Kube, namespace: str, tmp_path: Path, **more: Any
) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "kube_config": kube.plane.kubeconfig,
        "kube_namespace": namespace,
        "kube_image": "mahavishnu:test",
        "kube_request_timeout": 20.0,
    }
    return make_settings(prefix, tmp_path, **{**values, **more})


@pytest.fixture
async def standalone_settings(
    kube: Kube, namespace: str, tmp_path: Path, prefix: str
) -> AsyncIterator[Settings]:
    """Settings on the standalone Redis only, for tests where the broker plays no part."""
    kube.kubelet.run_namespaces.discard(namespace)  # pods are only marked Running here
    redis_secret(kube, namespace, REDIS_URL)
    yield kube_settings_for(prefix, REDIS_URL, kube, namespace, tmp_path)
    await delete_prefix(REDIS_URL, prefix)
