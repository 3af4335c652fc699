"""What the delegated-pool tests share: in-process orchestrators of a deployment, and this
project's MCP facade in its own process that a test can kill and start again on its port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from orchestrator.broker import free_port
from orchestrator.orchestrator import Orchestrator
from shared.config import Settings

REPO = Path(__file__).resolve().parent.parent


@contextlib.asynccontextmanager
async def running_orchestrator(settings: Settings, log_dir: Path) -> AsyncIterator[Orchestrator]:
    """An orchestrator of the deployment `settings` describes, in this process."""
    orch = Orchestrator(settings, log_dir=log_dir)
    task = asyncio.create_task(orch.run())
    await orch.wait_ready()
    try:
        yield orch
    finally:
        orch.request_stop()
        await task


class Facade:
    """`run_mcp(http=True)` of one deployment on a fixed port, with a bearer token."""

    def __init__(self, settings: Settings, token: str, log: Path) -> None:
        self.settings, self.token, self.log = settings, token, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.proc: asyncio.subprocess.Process | None = None

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAHAVISHNU_")}
        env.update(
            {
                "MAHAVISHNU_KEY_PREFIX": self.settings.key_prefix,
                "MAHAVISHNU_REDIS_URL": self.settings.redis_url,
                "MAHAVISHNU_MCP_HTTP_TOKEN": self.token,
                "MAHAVISHNU_SETTINGS_DIR": str(REPO / "no-such-settings"),
            }
        )
        return env

    async def start(self) -> None:
        """Start it and return once `/healthz` answers."""
        code = (
            "from orchestrator.mcp.server import run_mcp; "
            f"run_mcp(http=True, host='127.0.0.1', port={self.port})"
        )
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", code, cwd=REPO, env=self._env(),
                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            )  # fmt: skip
        async with httpx.AsyncClient() as http:
            for _ in range(400):  # bounded: only until the port answers
                if self.proc.returncode is not None:
                    raise AssertionError(f"facade exited: {self.tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"http://127.0.0.1:{self.port}/healthz")).status_code == 200:
                        return
                await asyncio.sleep(0.05)
        raise AssertionError(f"facade did not answer: {self.tail()}")

    async def kill(self) -> None:
        """SIGKILL it (no goodbye to its clients)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                await self.kill()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
