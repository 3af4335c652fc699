"""The objects a `kubernetes` pool is made of, without an API server: what the pods get in
their environment (and what they never get), the KEDA trigger for each kind of Redis URL, and
the options refused at spawn."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes.client import V1Deployment

from orchestrator.pools.kubernetes import KubernetesBackend
from orchestrator.pools.kubernetes_manifests import deployment, pool_options, scaled_object
from shared.config import load_settings
from shared.models import PoolSpec
from tests.k8s import keda

pytestmark = pytest.mark.unit


def spec(**fields: object) -> PoolSpec:
    return PoolSpec.model_validate({"name": "k", "pool_type": "kubernetes", **fields})


def test_pods_get_the_settings_but_never_the_secrets(tmp_path: Path) -> None:
    settings = load_settings(
        redis_url="redis://:hunter2@redis:6379/3",
        mcp_http_token="facade-secret",
        key_prefix="blue:",
        kube_namespace="work",
        embedded_broker_dir=tmp_path,
    )
    pool_spec = spec(concurrency=3)
    body = deployment(pool_options(pool_spec, settings), pool_spec, settings, 2)
    V1Deployment.model_validate(body)  # what the client would send
    container = body["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["MAHAVISHNU_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "mahavishnu-redis",
        "key": "url",
    }
    assert env["MAHAVISHNU_KEY_PREFIX"]["value"] == "blue:"
    assert env["MAHAVISHNU_EMBEDDED_BROKER"]["value"] == "false"
    text = repr(body)
    assert "hunter2" not in text and "facade-secret" not in text
    assert not any(name.lower().startswith("mahavishnu_kube") for name in env)
    assert container["args"] == ["--pool", pool_spec.id, "--worker-id", "$(POD_NAME)",
                                 "--concurrency", "3"]  # fmt: skip
    assert body["metadata"] == {
        "name": f"mhv-{pool_spec.id}",
        "namespace": "work",
        "labels": body["spec"]["template"]["metadata"]["labels"],
    }
    pod = body["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and not pod["automountServiceAccountToken"]


@pytest.mark.parametrize(
    ("url", "kind", "address_key", "extra"),
    [
        ("redis://127.0.0.1:6379/2", "redis-streams", "addressFromEnv", {"databaseIndex": "2"}),
        ("rediss://redis:6380/0", "redis-streams", "addressFromEnv", {"enableTLS": "true"}),
        ("redis+cluster://a:7000,b:7001", "redis-cluster-streams", "addressesFromEnv", {}),
    ],
)
def test_keda_trigger_per_redis_url(
    url: str, kind: str, address_key: str, extra: dict[str, str], tmp_path: Path
) -> None:
    settings = load_settings(redis_url=url, embedded_broker_dir=tmp_path)
    pool_spec = spec(concurrency=2, max_workers=7, options={"kubernetes": {"keda": {}}})
    obj = scaled_object(pool_options(pool_spec, settings), pool_spec, settings, 0, 7)
    keda.strictly_valid(obj)
    trigger = obj["spec"]["triggers"][0]
    assert trigger["type"] == kind
    meta = trigger["metadata"]
    assert "consumerGroup" not in meta and meta["streamLength"] == "16"
    assert meta[address_key] == "REDIS_ADDRESS" and meta["passwordFromEnv"] == "REDIS_PASSWORD"
    assert extra.items() <= meta.items()
    assert obj["spec"]["minReplicaCount"] == 0 and obj["spec"]["maxReplicaCount"] == 7


def test_bad_options_are_refused_at_spawn_naming_the_field(tmp_path: Path) -> None:
    backend = KubernetesBackend(load_settings(embedded_broker_dir=tmp_path))
    assert backend.problem(spec()) == ""
    assert "options.kubernetes.keda.stream_length" in backend.problem(
        spec(options={"kubernetes": {"keda": {"stream_length": 0}}})
    )
    assert "cannot name Kubernetes objects" in backend.problem(spec(id="Big_Pool"))
    assert "choose one" in backend.problem(
        spec(auto_scale=True, options={"kubernetes": {"keda": {}}})
    )
    assert "is not a DNS label" in backend.problem(
        spec(options={"kubernetes": {"namespace": "No Such"}})
    )
