"""The raw ceiling: the same stream round trip our tasks make, with nothing else.

The producer (this process, asyncio + redis-py + hiredis) `XADD`s entries pipelined in batches;
consumer processes (`bench.raw_consumer`) read them with `XREADGROUP COUNT n`, `XADD` a reply
to the producer's reply stream and `XACK` + `XDEL` the batch in one pipeline; the producer reads
its replies with a blocking `XREAD`. No validation, routing or bookkeeping: what our design could
reach on this machine if the system itself cost nothing.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from bench.config import ROOT
from bench.stats import (
    CpuMeter,
    Figure,
    Stopwatch,
    backlog_figure,
    client,
    concurrency_figure,
    cpu_values,
    delete_prefix,
    drain_values,
    latency_figure,
    peak_rss_mb,
    redis_used_memory,
    start_process,
    stop_process,
    throughput_figure,
    wait_for_line,
)

GROUP = "consumers"


def child_env() -> dict[str, str]:
    """The environment of a child running a `bench` module: the project on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAHAVISHNU_")}
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)
    return env


class RawRig:
    """A task stream with its group, consumer processes, and this process as the producer."""

    def __init__(self, url: str, prefix: str, *, count: int, log_dir: Path) -> None:
        self.url = url
        self.prefix = prefix
        self.count = count
        self.log_dir = log_dir
        self.stream = f"{prefix}tasks"
        self.redis: Any = client(url)
        self.consumers: list[asyncio.subprocess.Process] = []

    async def __aenter__(self) -> Self:
        await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop_consumers()
        try:
            await delete_prefix(self.redis, self.prefix)
        finally:
            await self.redis.aclose()

    def reply_key(self, name: str) -> str:
        """The reply stream of one producer-side client."""
        return f"{self.prefix}replies:{name}"

    @property
    def pids(self) -> list[int]:
        """Process ids of the running consumers."""
        return [p.pid for p in self.consumers if p.returncode is None]

    async def start_consumers(self, n: int) -> None:
        """Start `n` consumer processes and wait until each is a member of the group."""
        for _ in range(n):
            name = f"c{len(self.consumers) + 1}"
            proc = await start_process(
                [
                    sys.executable,
                    "-m",
                    "bench.raw_consumer",
                    "--url",
                    self.url,
                    "--stream",
                    self.stream,
                    "--group",
                    GROUP,
                    "--name",
                    name,
                    "--count",
                    str(self.count),
                ],
                env=child_env(),
                cwd=ROOT,
                log_path=self.log_dir / f"raw-{name}.log",
                stdout_pipe=True,
            )
            self.consumers.append(proc)
            await wait_for_line(proc, "ready", 30.0, f"raw consumer {name}")

    def peak_rss(self) -> float:
        """The highest peak RSS (MiB) among the consumers."""
        return max((peak_rss_mb(p) for p in self.pids), default=0.0)

    async def stop_consumers(self) -> None:
        """Stop every consumer."""
        await asyncio.gather(*(stop_process(p, 5.0) for p in self.consumers))
        self.consumers = []

    def meter(self) -> CpuMeter:
        """A CPU meter over the consumers and Redis."""
        return CpuMeter({"consumers": self.pids}, redis=self.redis)

    async def submit(self, start: int, n: int, reply: str) -> None:
        """XADD entries start..start+n in one pipeline."""
        pipe = self.redis.pipeline(transaction=False)
        for i in range(start, start + n):
            pipe.xadd(self.stream, {"t": i, "r": reply})
        await pipe.execute()

    async def collect(
        self, reply: str, n: int, timeout: float, *, last: bytes = b"0-0"
    ) -> list[tuple[int, float]]:
        """Read `n` replies with blocking XREADs; return (cumulative count, time) per read."""
        deadline = time.monotonic() + timeout
        got = 0
        marks: list[tuple[int, float]] = []
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{got} of {n} replies within {timeout:g}s")
            answer = await self.redis.xread(
                {reply: last}, count=1000, block=max(1, int(min(left, 1.0) * 1000))
            )
            if answer:
                entries = answer[0][1]
                last = entries[-1][0]
                got += len(entries)
                marks.append((got, time.perf_counter()))
        return marks

    async def round_trip(self, reply: str, last: bytes, i: int) -> bytes:
        """One task: XADD, then a blocking XREAD of its reply; return the reply's id."""
        await self.redis.xadd(self.stream, {"t": i, "r": reply})
        while True:
            answer = await self.redis.xread({reply: last}, count=1, block=10_000)
            if answer:
                return bytes(answer[0][1][0][0])


async def throughput(rig: RawRig, n: int, batch: int, warmup: int, timeout: float) -> Figure:
    """Tasks/s from the first submit to the last reply, with the consumers already running."""
    workers = len(rig.pids)
    await _run_batches(rig, "warmup", warmup, batch, timeout)
    meter = rig.meter()
    await meter.start()
    clock = Stopwatch()
    await _run_batches(rig, "throughput", n, batch, timeout)
    seconds = clock.elapsed
    spent = await meter.stop()
    return throughput_figure(
        f"throughput/raw/{workers}",
        "raw",
        f"{workers} consumer process{'es' if workers > 1 else ''}",
        n,
        seconds,
        {"rss_peak_mb.consumer": rig.peak_rss(), **cpu_values(spent, n, seconds)},
    )


async def _run_batches(rig: RawRig, name: str, n: int, batch: int, timeout: float) -> None:
    reply = rig.reply_key(name)
    reader = asyncio.create_task(rig.collect(reply, n, timeout))
    for start in range(0, n, batch):
        await rig.submit(start, min(batch, n - start), reply)
    await reader


async def latency(rig: RawRig, n: int, warmup: int) -> Figure:
    """Sequential round trips from one client: p50 and p99."""
    reply = rig.reply_key("latency")
    last = b"0-0"
    samples: list[float] = []
    for i in range(warmup + n):
        began = time.perf_counter()
        last = await rig.round_trip(reply, last, i)
        if i >= warmup:
            samples.append(time.perf_counter() - began)
    return latency_figure("raw", f"{len(rig.pids)} consumer process, 1 client", samples)


async def concurrency(rig: RawRig, clients: int, rounds: int) -> Figure:
    """`clients` asyncio clients, each with its own reply stream, doing sequential round trips."""
    samples: list[float] = []

    async def one(c: int) -> None:
        reply = rig.reply_key(f"client{c}")
        last = b"0-0"
        for i in range(rounds):
            began = time.perf_counter()
            last = await rig.round_trip(reply, last, i)
            samples.append(time.perf_counter() - began)

    await asyncio.gather(*(one(c) for c in range(clients)))  # open every client's connection
    samples.clear()
    meter = rig.meter()
    await meter.start()
    clock = Stopwatch()
    await asyncio.gather(*(one(c) for c in range(clients)))
    seconds = clock.elapsed
    spent = await meter.stop()
    return concurrency_figure(
        "raw",
        f"{len(rig.pids)} consumer process, {clients} clients in 1 process",
        samples,
        clients=clients,
        rounds=rounds,
        seconds=seconds,
        spent=spent,
    )


async def backlog(rig: RawRig, n: int, consumers: int, timeout: float) -> Figure:
    """Queue `n` entries with no consumer, measure Redis memory, then drain them."""
    reply = rig.reply_key("backlog")
    before = await redis_used_memory(rig.redis)
    for start in range(0, n, 1000):
        await rig.submit(start, min(1000, n - start), reply)
    after = await redis_used_memory(rig.redis)
    reader = asyncio.create_task(rig.collect(reply, n, timeout))
    await rig.start_consumers(consumers)
    marks = await reader
    values = drain_values(marks, n)
    values.update(
        {
            "tasks": float(n),
            "redis_bytes_per_task": (after - before) / n,
        }
    )
    return backlog_figure("raw", f"{n:,} entries queued, then {consumers} consumer process", values)
