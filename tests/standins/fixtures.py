"""pytest fixtures `session_buddy` and `akosha`: a stand-in MCP server in its own process on a
free loopback port, or the real server when the environment names one.

    async def test_sync(session_buddy: Counterpart) -> None:
        async with RemoteMCP(session_buddy.url) as remote: ...
        await session_buddy.stop()     # the process is killed (SIGKILL): an outage
        await session_buddy.start()    # back on the same port, empty, once it listens

One stand-in process per service serves the whole pytest session; before each test it is
emptied (no pools, no records: see `server.RESET_PATH`), or started again if a test stopped it.
`MAHAVISHNU_REAL_SESSION_BUDDY_URL` / `MAHAVISHNU_REAL_AKOSHA_URL` (set by
`make test-counterparts`) make the fixtures yield that real server instead (`real` is True);
`stop()` / `start()` then skip the test, since a test cannot stop a server it did not start.
Tests that should also run against the real services carry `@pytest.mark.counterparts`. A real
server keeps what earlier tests stored, so such tests use ids and texts of their own.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextContent

from orchestrator.broker import free_port
from tests.standins.server import READY_LINE, RESET_PATH

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
REAL_URL_VARIABLES = {
    "session-buddy": "MAHAVISHNU_REAL_SESSION_BUDDY_URL",
    "akosha": "MAHAVISHNU_REAL_AKOSHA_URL",
}
START_TIMEOUT = 60.0  # seconds a stand-in may take to listen (Python start-up on a busy machine)


class Counterpart:
    """One MCP service a test talks to: a stand-in process this object owns, or a real server."""

    def __init__(self, name: str, *, port: int, log: Path | None, real_url: str | None = None):
        self.name = name
        self.port = port
        self.real = real_url is not None
        self.url = real_url or f"http://127.0.0.1:{port}/mcp"
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The stand-in's process id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    async def start(self) -> None:
        """Start the stand-in on its port (again after `stop`, empty); returns once it listens.
        Skips the test for a real server."""
        if self.real:
            pytest.skip(f"{self.name} is the real server at {self.url}: the test cannot start it")
        await asyncio.to_thread(self.spawn)

    async def stop(self) -> None:
        """Kill the stand-in (SIGKILL, like a crash or a lost host); its port stays its own for
        `start`. Skips the test for a real server."""
        if self.real:
            pytest.skip(f"{self.name} is the real server at {self.url}: the test cannot stop it")
        await asyncio.to_thread(self.kill)

    async def reset(self) -> None:
        """Empty the running stand-in (no pools, no records)."""
        async with httpx.AsyncClient(timeout=30) as http:
            answer = await http.post(f"http://127.0.0.1:{self.port}{RESET_PATH}")
            answer.raise_for_status()

    def spawn(self) -> None:
        """Start the process and block until it prints that it listens (its ready line)."""
        if self.pid is not None:
            raise RuntimeError(f"the {self.name} stand-in already runs (pid {self.pid})")
        assert self._log is not None
        with self._log.open("ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.standins", self.name, "--port", str(self.port)],
                cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
            )  # fmt: skip
        self._proc = proc
        problem = self._await_ready(proc)
        if problem is not None:
            self.kill()
            raise RuntimeError(
                f"the {self.name} stand-in did not start on port {self.port} ({problem}): "
                f"{self._log_tail()}"
            )

    def _await_ready(self, proc: subprocess.Popen[bytes]) -> str | None:
        assert proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([proc.stdout], [], [], left)
            if not readable:
                break
            line = proc.stdout.readline()
            if not line:
                return f"it exited with status {proc.wait()}"
            if line.decode().startswith(READY_LINE):
                return None
        return f"no ready line within {START_TIMEOUT:g} s"

    def kill(self) -> None:
        """SIGKILL the stand-in by its pid and reap it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def _log_tail(self, lines: int = 20) -> str:
        if self._log is None or not self._log.exists():
            return "(no log)"
        return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])

    def __repr__(self) -> str:
        kind = "real" if self.real else f"stand-in pid {self.pid}"
        return f"Counterpart({self.name}, {self.url}, {kind})"


def counterpart(name: str, log_dir: Path) -> Counterpart:
    """The real server named by the environment, or a started stand-in on a free port."""
    real_url = os.environ.get(REAL_URL_VARIABLES[name], "").strip() or None
    if real_url is not None:
        return Counterpart(name, port=0, log=None, real_url=real_url)
    service = Counterpart(name, port=free_port(), log=log_dir / f"{name}-standin.log")
    service.spawn()
    return service


async def fresh(service: Counterpart) -> Counterpart:
    """`service` ready for a test: a real server as it is, a stand-in emptied or restarted."""
    if not service.real:
        if service.pid is None:
            await service.start()
        else:
            await service.reset()
    return service


@pytest.fixture(scope="session")
def session_buddy_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Counterpart]:
    service = counterpart("session-buddy", tmp_path_factory.mktemp("session-buddy"))
    yield service
    service.kill()


@pytest.fixture(scope="session")
def akosha_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Counterpart]:
    service = counterpart("akosha", tmp_path_factory.mktemp("akosha"))
    yield service
    service.kill()


@pytest.fixture
async def session_buddy(session_buddy_process: Counterpart) -> Counterpart:
    """Session-Buddy 0.36.0: the stand-in, empty, or the real one
    (MAHAVISHNU_REAL_SESSION_BUDDY_URL)."""
    return await fresh(session_buddy_process)


@pytest.fixture
async def akosha(akosha_process: Counterpart) -> Counterpart:
    """Akosha 0.24.5: the stand-in, empty, or the real one (MAHAVISHNU_REAL_AKOSHA_URL)."""
    return await fresh(akosha_process)


@asynccontextmanager
async def connected(service: Counterpart) -> AsyncIterator[Client]:
    """A session with `service` through the real SDK's streamable HTTP client."""
    async with Client(streamable_http_client(service.url)) as client:
        yield client


def reply_json(result: CallToolResult) -> Any:
    """The JSON object a pool or Akosha tool answered (its text, which the structured content
    repeats); fails on an `is_error` reply."""
    text = reply_text_only(result)
    value = json.loads(text)
    assert result.structured_content == value, "the structured content is not the text's JSON"
    return value


def reply_text(result: CallToolResult) -> str:
    """The text a Session-Buddy memory tool answered (structured content `{"result": text}`);
    fails on an `is_error` reply."""
    text = reply_text_only(result)
    assert result.structured_content == {"result": text}
    return text


def reply_text_only(result: CallToolResult) -> str:
    texts = [c.text for c in result.content if isinstance(c, TextContent)]
    assert not result.is_error, f"the tool answered an error: {texts}"
    assert len(texts) == 1, f"expected one text content, got {result.content}"
    return texts[0]


def error_text(result: CallToolResult) -> str:
    """The message of an `is_error` reply; fails on a normal one."""
    texts = [c.text for c in result.content if isinstance(c, TextContent)]
    assert result.is_error, f"expected an error reply, got {texts}"
    return "".join(texts)
