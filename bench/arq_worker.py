"""An arq worker serving the no-op job. Runs with the python of the arq virtual environment.

    <arq-venv>/bin/python bench/arq_worker.py --url URL --queue Q [--tuned] [--max-jobs N]

This file is executed as a plain script by the arq environment's interpreter, never imported
by the project (arq pins redis-py below 6, so it cannot share the project's environment).
Without --tuned every setting is arq's default (max_jobs=10, poll_delay=0.5 s,
queue_read_limit=100, job_timeout=300 s, keep_result=3600 s, max_tries=5, pickle). With
--tuned: max_jobs=64 and poll_delay=0.01 s; --max-jobs sets max_jobs alone (the mixed-duration
scenario's slots). It prints `ready` when it starts polling.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from arq.connections import RedisSettings  # type: ignore[import-not-found,unused-ignore]
from arq.worker import Worker  # type: ignore[import-not-found,unused-ignore]

TUNED: dict[str, Any] = {"max_jobs": 64, "poll_delay": 0.01}


async def noop(ctx: dict[str, Any]) -> None:
    """The no-op job."""
    return None


async def sleep_ms(ctx: dict[str, Any], ms: int) -> None:
    """The job of the mixed-duration scenario: sleep `ms` milliseconds."""
    await asyncio.sleep(ms / 1000.0)


async def startup(ctx: dict[str, Any]) -> None:
    """Tell the harness the worker is about to poll."""
    print("ready", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the worker until SIGTERM (arq's own signal handling drains it)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--tuned", action="store_true")
    parser.add_argument("--max-jobs", type=int, default=None)
    args = parser.parse_args(argv)
    options = dict(TUNED) if args.tuned else {}
    if args.max_jobs is not None:
        options["max_jobs"] = args.max_jobs
    worker = Worker(
        functions=[noop, sleep_ms],
        queue_name=args.queue,
        redis_settings=RedisSettings.from_dsn(args.url),
        on_startup=startup,
        **options,
    )
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
