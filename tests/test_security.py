"""Brokers behind an ACL user and password, and behind TLS; secrets never reach logs or output."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.broker import EmbeddedBroker, free_port, start_redis_server
from orchestrator.orchestrator import Orchestrator
from shared.client import PoolManager
from shared.config import Settings, settings_env
from shared.errors import BrokerError
from tests.conftest import delete_prefix, make_settings

PASSWORD = "s3cret-Pa55word"


async def run_one_task(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Orchestrator + a local pool of one worker process + one task, against `settings`."""
    monkeypatch.setenv("MAHAVISHNU_SETTINGS_DIR", str(tmp_path / "no-settings"))
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    orch = Orchestrator(settings, log_dir=tmp_path / "logs")
    running = asyncio.create_task(orch.run())
    try:
        await orch.wait_ready()
        async with PoolManager(settings) as pm:
            pool_id = await pm.spawn_pool("local", name="secure", min_workers=1)
            result = await pm.execute_on_pool(
                pool_id, {"prompt": "over a guarded line"}, timeout=15
            )
            health = await pm.health_check()
            await pm.close_pool(pool_id, timeout=20)
    finally:
        orch.request_stop()
        await running
    await delete_prefix(settings.redis_url, settings.key_prefix)
    return result, health


@pytest.fixture
async def acl_redis(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    """A Redis with an ACL user `alice` whose password is PASSWORD."""
    user = ["--user", "alice", "on", f">{PASSWORD}", "~*", "&*", "+@all"]
    broker = await start_redis_server(
        free_port(), tmp_path / "acl", appendonly=False, extra_args=user
    )
    yield broker
    await broker.stop()


async def test_an_acl_user_with_a_password_works_and_the_password_stays_secret(
    acl_redis: EmbeddedBroker,
    prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"redis://alice:{PASSWORD}@127.0.0.1:{acl_redis.port}/0"
    settings = make_settings(prefix, tmp_path, redis_url=url)
    result, health = await run_one_task(settings, tmp_path, monkeypatch)
    assert result.ok and result.output == "over a guarded line"
    assert health["broker"]["url"] == f"redis://alice:***@127.0.0.1:{acl_redis.port}/0"
    assert PASSWORD not in json.dumps(health)
    assert PASSWORD not in caplog.text
    for log_file in (tmp_path / "logs").rglob("*.log"):
        assert PASSWORD not in log_file.read_text()


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1, made with the openssl command."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = folder / "ca.key", folder / "ca.crt"
    key, csr, crt = folder / "server.key", folder / "server.csr", folder / "server.crt"
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", str(ca_key), "-out", str(ca_crt))  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", str(key), "-out", str(csr))  # fmt: skip
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(crt))  # fmt: skip
    return ca_crt, crt, key


async def test_a_tls_broker_works_with_rediss_urls(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    ca, crt, key = make_certificates(tmp_path / "tls")
    tls_port = free_port()
    tls = ["--tls-port", str(tls_port), "--tls-cert-file", str(crt), "--tls-key-file", str(key),
           "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]  # fmt: skip
    try:
        broker = await start_redis_server(
            free_port(), tmp_path / "tls-data", appendonly=False, extra_args=tls
        )
    except BrokerError as exc:
        if "tls" in str(exc).lower():
            pytest.skip(f"this redis-server was built without TLS: {exc}")
        raise
    try:
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}"
        settings = make_settings(prefix, tmp_path, redis_url=url)
        result, _ = await run_one_task(settings, tmp_path, monkeypatch)
        assert result.ok
    finally:
        await broker.stop()
