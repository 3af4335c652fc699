"""What the peer systems measured beside the pools (arq, BullMQ) have in common.

Each runs in an environment of its own that the harness makes on first use (`arq_bench`: a
Python virtual environment, `bullmq_bench`: a Node one), as worker processes that print `ready`
once they serve and a client process that prints one JSON document on its last line of stdout.
When the environment cannot be made, every figure of the system is reported as unavailable
with the reason (`prepare`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

from bench.config import ROOT
from bench.stats import start_process, stop_process, wait_for_line

if TYPE_CHECKING:
    from bench.runner import Runner


class PeerEnv(Protocol):
    """A peer's environment, once made."""

    @property
    def describe(self) -> str:
        """Its versions, for the report (`meta.versions`)."""
        ...


EnvT = TypeVar("EnvT", bound=PeerEnv)

READY_WITHIN = 60.0  # seconds a worker process may take to report `ready`
STOP_GRACE = 10.0  # seconds a worker process may take to exit after SIGTERM


class PeerUnavailable(RuntimeError):
    """The environment of a peer system could not be created or used."""


def tail(text: str, lines: int = 3) -> str:
    """The last non-empty lines of a child's output, on one line (for a reason)."""
    kept = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])[:400]


def last_json(stdout: str) -> dict[str, Any]:
    """The JSON document on the last line of a child's stdout."""
    data: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return data


async def run_client(
    argv: Sequence[str], *, env: Mapping[str, str], timeout: float, what: str
) -> dict[str, Any]:
    """Run a peer's client process to its end (killed after `timeout`); its JSON answer."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        cwd=str(ROOT),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{what} exited {proc.returncode}: {tail(err.decode())}")
    return last_json(out.decode())


class PeerWorkers:
    """Worker processes of a peer system on one queue, all started with the same command line;
    stopped (SIGTERM: they finish their jobs and exit) when the `async with` ends."""

    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str], log_dir: Path, log_stem: str, what: str
    ) -> None:
        self.argv = list(argv)
        self.child_env = dict(env)
        self.log_dir = log_dir
        self.log_stem = log_stem  # the log of worker i is `<log_stem><i>.log`
        self.what = what
        self.procs: list[asyncio.subprocess.Process] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(stop_process(p, STOP_GRACE) for p in self.procs))
        self.procs = []

    async def start(self, n: int) -> None:
        """Start `n` workers and wait until each reports `ready`."""
        for _ in range(n):
            proc = await start_process(
                self.argv,
                env=self.child_env,
                cwd=ROOT,
                log_path=self.log_dir / f"{self.log_stem}{len(self.procs)}.log",
                stdout_pipe=True,
            )
            self.procs.append(proc)
            await wait_for_line(proc, "ready", READY_WITHIN, self.what)

    @property
    def pids(self) -> list[int]:
        """Pids of the running workers."""
        return [p.pid for p in self.procs if p.returncode is None]


def plan_ms(plan_s: Sequence[float]) -> str:
    """The mixed plan's durations as a client takes them: milliseconds, comma-separated."""
    return ",".join(str(round(s * 1000)) for s in plan_s)


async def prepare(
    runner: Runner,
    system: str,
    label: str,
    where: str,
    make: Callable[[], EnvT],
    keys: list[tuple[str, str]],
) -> EnvT | None:
    """The peer's environment for the figures `keys` (made in a thread: it may install), its
    version recorded; None when no figure is wanted, or when it cannot be made: then each
    figure is recorded as unavailable with the reason."""
    if not keys:
        return None
    runner.log(f"{label}: preparing {where}")
    try:
        env = await asyncio.to_thread(make)
    except PeerUnavailable as exc:
        runner.versions[system] = f"unavailable: {exc}"
        runner.fail_all(keys, f"{label} environment unavailable: {exc}", status="unavailable")
        return None
    runner.versions[system] = env.describe
    return env
