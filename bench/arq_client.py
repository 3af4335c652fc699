"""The arq side of the harness: enqueue no-op jobs and time them. Runs in the arq environment.

    <arq-venv>/bin/python bench/arq_client.py throughput --url URL --queue Q --n N [--batch B]
    <arq-venv>/bin/python bench/arq_client.py latency --url URL --queue Q --n N
    <arq-venv>/bin/python bench/arq_client.py mixed --url URL --queue Q --plan 20,1000,...
    <arq-venv>/bin/python bench/arq_client.py versions

Prints one JSON document on its last line of stdout. arq has no batch enqueue, so a batch is
`B` concurrent `enqueue_job` calls. Throughput runs until the queue (a sorted set that arq's
worker leaves a job in until its result is written) is empty; latency waits for each result
with `Job.result(poll_delay=0.005)` (arq's default poll is 0.5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from arq import create_pool  # type: ignore[import-not-found,unused-ignore]
from arq.connections import RedisSettings  # type: ignore[import-not-found,unused-ignore]

RESULT_PREFIX = "arq:result:"
RESULT_POLL = 0.005


async def _enqueue(redis: Any, n: int, batch: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, batch):
        jobs = await asyncio.gather(
            *(redis.enqueue_job("noop") for _ in range(min(batch, n - start)))
        )
        ids.extend(job.job_id for job in jobs)
    return ids


async def _drained(redis: Any, queue: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await redis.zcard(queue):
        if time.monotonic() > deadline:
            raise TimeoutError(f"arq queue not drained within {timeout:g}s")
        await asyncio.sleep(0.002)


async def _forget(redis: Any, ids: list[str]) -> int:
    """Delete the result keys of `ids`; return how many existed."""
    found = 0
    for start in range(0, len(ids), 1000):
        chunk = [RESULT_PREFIX + i for i in ids[start : start + 1000]]
        found += int(await redis.unlink(*chunk))
    return found


async def throughput(url: str, queue: str, n: int, batch: int, warmup: int) -> dict[str, Any]:
    """Jobs/s from the first enqueue until the queue is empty."""
    redis = await create_pool(RedisSettings.from_dsn(url), default_queue_name=queue)
    try:
        warm = await _enqueue(redis, warmup, batch)
        await _drained(redis, queue, 600)
        await _forget(redis, warm)
        cpu = time.process_time()
        began = time.perf_counter()
        ids = await _enqueue(redis, n, batch)
        await _drained(redis, queue, 1800)
        seconds = time.perf_counter() - began
        cpu = time.process_time() - cpu
        results = await _forget(redis, ids)
    finally:
        await redis.aclose()
    return {"tasks": n, "seconds": seconds, "client_cpu": cpu, "results": results}


async def latency(url: str, queue: str, n: int, warmup: int) -> dict[str, Any]:
    """Sequential enqueue + wait for the result, `n` times."""
    redis = await create_pool(RedisSettings.from_dsn(url), default_queue_name=queue)
    samples: list[float] = []
    ids: list[str] = []
    try:
        for i in range(warmup + n):
            began = time.perf_counter()
            job = await redis.enqueue_job("noop")
            await job.result(timeout=60, poll_delay=RESULT_POLL)
            if i >= warmup:
                samples.append(time.perf_counter() - began)
            ids.append(job.job_id)
        await _forget(redis, ids)
    finally:
        await redis.aclose()
    return {"samples": samples}


async def mixed(url: str, queue: str, plan: list[int]) -> dict[str, Any]:
    """`sleep_ms` jobs of these milliseconds, enqueued at once; seconds until the queue is empty."""
    redis = await create_pool(RedisSettings.from_dsn(url), default_queue_name=queue)
    try:
        began = time.perf_counter()
        jobs = await asyncio.gather(*(redis.enqueue_job("sleep_ms", ms) for ms in plan))
        await _drained(redis, queue, 1800)
        seconds = time.perf_counter() - began
        results = await _forget(redis, [job.job_id for job in jobs])
    finally:
        await redis.aclose()
    return {"tasks": len(plan), "seconds": seconds, "results": results}


def versions() -> dict[str, Any]:
    """arq's version and the redis-py it runs on."""
    import arq.version  # type: ignore[import-not-found,unused-ignore]
    import redis

    return {"arq": str(arq.version.VERSION), "redis_py": redis.__version__}


def main(argv: list[str] | None = None) -> int:
    """Run one measurement and print its JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["throughput", "latency", "mixed", "versions"])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--queue", default="arq:queue")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument(
        "--plan", default="", help="milliseconds of each mixed job, comma-separated"
    )
    args = parser.parse_args(argv)
    if args.what == "versions":
        out = versions()
    elif args.what == "throughput":
        out = asyncio.run(throughput(args.url, args.queue, args.n, args.batch, args.warmup))
    elif args.what == "mixed":
        plan = [int(ms) for ms in args.plan.split(",") if ms.strip()]
        out = asyncio.run(mixed(args.url, args.queue, plan))
    else:
        out = asyncio.run(latency(args.url, args.queue, args.n, args.warmup))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
