"""`python -m worker --pool ID`: one worker process (run by `mahavishnu worker` and local pools)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from pydantic import ValidationError
from redis.exceptions import RedisError

from shared.config import load_settings
from shared.errors import MahavishnuError
from shared.logs import configure_logging, register_settings_secrets
from worker.worker import serve


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the worker until it drains, and return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--pool", required=True, help="id of the pool to serve")
    parser.add_argument("--worker-id", default=None, help="consumer name (default: generated)")
    parser.add_argument("--concurrency", type=int, default=None, help="tasks run at once")
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument(
        "--managed-by",
        default="",
        help="id of the orchestrator supervising this process (set by local pools; a worker "
        "started without it is an external worker that adds capacity)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics on this port (0: off; default: the metrics_port setting)",
    )
    args = parser.parse_args(argv)
    if args.concurrency is not None and args.concurrency < 1:
        parser.error(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        parser.error(f"--metrics-port must be 0 to 65535, got {args.metrics_port}")
    configure_logging(logging.INFO, "text")
    try:
        settings = load_settings()
        if args.metrics_port is not None:
            settings = settings.model_copy(update={"metrics_port": args.metrics_port})
        register_settings_secrets(settings)
        configure_logging(logging.INFO, settings.log_format)
        return asyncio.run(
            serve(
                settings,
                args.pool,
                concurrency=args.concurrency,
                burst=args.burst,
                worker_id=args.worker_id,
                managed_by=args.managed_by,
            )
        )
    except MahavishnuError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RedisError as exc:
        print(f"error: Redis: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # a pool hash written by hand or by another version
        print(
            f"error: pool {args.pool!r} has an unusable spec: {exc.errors()[0]['msg']}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
