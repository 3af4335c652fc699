"""A team's arq worker for the arq pool tests: run in arq's own venv (`.venv-arq`), imports only
arq and the standard library.

`python tests/arq_functions.py REDIS_URL QUEUE` runs a real `arq.worker.Worker` with these
functions, `allow_abort_jobs=True` (what cancelling an arq pool's task needs) and a 50 ms poll.
Each run of `count` and `slow` is counted in the arq Redis (`runs:<token>`), and a `slow` run
that finished sets `finished:<token>`, so tests can tell how often a job ran and whether an
aborted one ran to its end.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from arq import func
from arq.connections import RedisSettings
from arq.worker import Retry, Worker

IN_PROGRESS_TTL = 4.0
"""arq re-runs the job of a worker that died once the job's in-progress key expires, after its
longest job timeout + 10 s; the tests shorten that wait to this (longer than any job they run
to its end, so no live job is started twice)."""


async def shout(ctx: dict[str, Any], text: str) -> str:
    return text.upper()


async def add(ctx: dict[str, Any], a: float, b: float) -> float:
    return a + b


async def boom(ctx: dict[str, Any], message: str) -> None:
    raise ValueError(message)


async def count(ctx: dict[str, Any], token: str, seconds: float = 0.0) -> str:
    await ctx["redis"].incr(f"runs:{token}")
    await asyncio.sleep(seconds)
    return token


async def slow(ctx: dict[str, Any], token: str, seconds: float) -> float:
    await ctx["redis"].incr(f"runs:{token}")
    await asyncio.sleep(seconds)
    await ctx["redis"].set(f"finished:{token}", "1")
    return seconds


async def hang(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(60)


async def blob(ctx: dict[str, Any]) -> bytes:
    return b"\x00\x01"


async def again(ctx: dict[str, Any]) -> None:
    raise Retry(defer=0.01)  # arq runs it again, up to its max_tries


FUNCTIONS = [
    shout, add, boom, count, slow, blob, func(hang, timeout=1.0), func(again, max_tries=2),
]  # fmt: skip


def main(url: str, queue: str) -> None:
    worker = Worker(
        functions=FUNCTIONS,
        redis_settings=RedisSettings.from_dsn(url),
        queue_name=queue,
        allow_abort_jobs=True,
        poll_delay=0.05,
        max_jobs=20,
        job_timeout=30,
    )
    worker.in_progress_timeout_s = IN_PROGRESS_TTL
    worker.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
