"""The Kubernetes objects of a `kubernetes` pool: its worker Deployment and, optionally, its
KEDA ScaledObject; plus the pool's options (`options.kubernetes` of the pool spec).

A pool's workers are the pods of one Deployment, `mhv-<pool id>`, running
`python -m worker --pool <id> --worker-id $(POD_NAME)`: the pod name is the worker id, so the
pods' heartbeats are the pool's workers. The Redis URL comes from a Secret (key `url`); every
other setting of the orchestrator that spawned the pool goes into the pods' environment, so the
workers use the same key prefix and timings.

KEDA (`options.kubernetes.keda`): a `redis-streams` trigger on the pool's task stream with
`streamLength` and no `consumerGroup`. Entries are deleted on ack, so XLEN is the true backlog;
with `consumerGroup` KEDA would scale on the pending count instead, which is 0 while no worker
runs, so the pool could never scale up from zero. Trigger metadata values are strings.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.config import ENV_PREFIX, Settings, settings_env
from shared.models import PoolSpec

POOL_LABEL = "mahavishnu.io/pool"
MANAGED_BY = {"app.kubernetes.io/managed-by": "mahavishnu"}
CONTAINER = "worker"
KEDA_GROUP, KEDA_VERSION, KEDA_PLURAL = "keda.sh", "v1alpha1", "scaledobjects"
ADDRESS_ENV, PASSWORD_ENV = "REDIS_ADDRESS", "REDIS_PASSWORD"  # from the Redis Secret, for KEDA
_KUBE_SETTINGS_ENV = {
    f"{ENV_PREFIX}{n.upper()}" for n in Settings.model_fields if n.startswith("kube_")
}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_POD_ENV_SKIPPED = {  # set otherwise in a pod, or not the workers' business
    "MAHAVISHNU_REDIS_URL",
    "MAHAVISHNU_MCP_HTTP_TOKEN",
    "MAHAVISHNU_EMBEDDED_BROKER",
    "MAHAVISHNU_EMBEDDED_BROKER_DIR",
}


class KedaOptions(BaseModel):
    """Autoscaling of the pool's Deployment by KEDA on its task stream's length."""

    model_config = ConfigDict(extra="forbid")

    stream_length: int | None = Field(default=None, ge=1)  # default: concurrency x backlog/worker
    polling_interval: int = Field(default=5, ge=1, le=3600)
    cooldown_period: int = Field(default=60, ge=0, le=86_400)
    authentication: str | None = None  # a TriggerAuthentication's name; default: the pods' env


class KubePoolOptions(BaseModel):
    """`options.kubernetes` of a pool spec; unset fields come from the `kube_*` settings."""

    model_config = ConfigDict(extra="forbid")

    namespace: str | None = None
    image: str | None = None
    image_pull_policy: str = Field(default="IfNotPresent", pattern="^(Always|IfNotPresent|Never)$")
    service_account: str | None = None
    redis_secret: str | None = None
    resources: dict[str, dict[str, str]] = Field(default_factory=dict)  # requests/limits
    node_selector: dict[str, str] = Field(default_factory=dict)
    keda: KedaOptions | None = None


class KubePool(BaseModel):
    """Everything the backend needs to know of one pool's objects, resolved from settings."""

    pool_id: str
    name: str
    namespace: str
    image: str
    service_account: str
    redis_secret: str
    options: KubePoolOptions


def pool_options(spec: PoolSpec, settings: Settings) -> KubePool:
    """The pool's resolved Kubernetes options; ValueError naming what is wrong."""
    raw = spec.options.get("kubernetes", {})
    try:
        opts = KubePoolOptions.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"options.kubernetes.{where}: {first['msg']}") from None
    if not _DNS_LABEL.match(spec.id) or len(spec.id) > 59:
        raise ValueError(
            f"pool id {spec.id!r} cannot name Kubernetes objects: use at most 59 lowercase "
            "letters, digits and '-'"
        )
    pool = KubePool(
        pool_id=spec.id,
        name=f"mhv-{spec.id}",
        namespace=opts.namespace or settings.kube_namespace,
        image=opts.image or settings.kube_image,
        service_account=opts.service_account or settings.kube_service_account,
        redis_secret=opts.redis_secret or settings.kube_redis_secret,
        options=opts,
    )
    if not _DNS_LABEL.match(pool.namespace):
        raise ValueError(f"options.kubernetes.namespace {pool.namespace!r} is not a DNS label")
    return pool


def labels(pool: KubePool) -> dict[str, str]:
    return {
        **MANAGED_BY,
        "app.kubernetes.io/name": "mahavishnu",
        "app.kubernetes.io/component": "worker",
        POOL_LABEL: pool.pool_id,
    }


def selector(pool: KubePool) -> str:
    """The label selector of the pool's pods."""
    return f"{POOL_LABEL}={pool.pool_id}"


def _secret_env(name: str, secret: str, key: str, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def deployment(pool: KubePool, spec: PoolSpec, settings: Settings, replicas: int) -> dict[str, Any]:
    """The pool's worker Deployment (a plain dict, camelCase as the API takes it)."""
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        _secret_env("MAHAVISHNU_REDIS_URL", pool.redis_secret, "url"),
        {"name": "MAHAVISHNU_EMBEDDED_BROKER", "value": "false"},
    ]
    if pool.options.keda is not None and pool.options.keda.authentication is None:
        env.append(_secret_env(ADDRESS_ENV, pool.redis_secret, "address"))
        env.append(_secret_env(PASSWORD_ENV, pool.redis_secret, "password", optional=True))
    for name, value in sorted(settings_env(settings).items()):
        if name not in _POD_ENV_SKIPPED and name not in _KUBE_SETTINGS_ENV:
            env.append({"name": name, "value": value})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": pool.image,
        "imagePullPolicy": pool.options.image_pull_policy,
        "command": ["python", "-m", "worker"],
        "args": [
            "--pool",
            spec.id,
            "--worker-id",
            "$(POD_NAME)",
            "--concurrency",
            str(spec.concurrency),
        ],
        "env": env,
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": False},
    }
    if pool.options.resources:
        container["resources"] = pool.options.resources
    pod_spec: dict[str, Any] = {
        "serviceAccountName": pool.service_account,
        "automountServiceAccountToken": False,  # workers never call the API
        # the worker drains for drain_grace seconds on SIGTERM; the kubelet kills after this
        "terminationGracePeriodSeconds": int(settings.drain_grace) + 10,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001},
        "containers": [container],
    }
    if pool.options.node_selector:
        pod_spec["nodeSelector"] = pool.options.node_selector
    meta = {"name": pool.name, "namespace": pool.namespace, "labels": labels(pool)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {POOL_LABEL: pool.pool_id}},
            "template": {"metadata": {"labels": labels(pool)}, "spec": pod_spec},
        },
    }


def redis_trigger(settings: Settings, stream: str, length: int, auth: str | None) -> dict[str, Any]:
    """A KEDA trigger on one task stream: `streamLength` per replica, no `consumerGroup`."""
    scheme = settings.redis_url.partition("://")[0].lower()
    cluster = "+cluster" in scheme
    metadata: dict[str, str] = {"stream": stream, "streamLength": str(length)}
    if scheme.startswith(("rediss", "valkeys")):
        metadata["enableTLS"] = "true"
    if not cluster:
        database = urlsplit(settings.redis_url).path.lstrip("/") or "0"
        metadata["databaseIndex"] = database if database.isdigit() else "0"
    trigger: dict[str, Any] = {
        "type": "redis-cluster-streams" if cluster else "redis-streams",
        "metadata": metadata,
    }
    if auth is not None:
        trigger["authenticationRef"] = {"name": auth}
    else:
        metadata["addressesFromEnv" if cluster else "addressFromEnv"] = ADDRESS_ENV
        metadata["passwordFromEnv"] = PASSWORD_ENV
    return trigger


def scaled_object(
    pool: KubePool, spec: PoolSpec, settings: Settings, low: int, high: int
) -> dict[str, Any]:
    """The pool's ScaledObject: KEDA keeps the Deployment's replicas within [low, high]."""
    keda = pool.options.keda
    assert keda is not None
    length = keda.stream_length or spec.concurrency * settings.autoscale_backlog_per_worker
    stream = settings.keys.pool_tasks(spec.id)
    return {
        "apiVersion": f"{KEDA_GROUP}/{KEDA_VERSION}",
        "kind": "ScaledObject",
        "metadata": {"name": pool.name, "namespace": pool.namespace, "labels": labels(pool)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": pool.name},
            "minReplicaCount": low,
            "maxReplicaCount": high,
            "pollingInterval": keda.polling_interval,
            "cooldownPeriod": keda.cooldown_period,
            "triggers": [redis_trigger(settings, stream, length, keda.authentication)],
        },
    }
