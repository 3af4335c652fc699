"""The consumer of the raw ceiling: the least a Redis Streams worker can do per task.

    python -m bench.raw_consumer --url URL --stream S --group G --name C [--count 64]

It reads the task stream with `XREADGROUP COUNT n`, and per batch sends one pipeline: an `XADD`
of a reply to the stream each entry names (field `r`), then one `XACK` and one `XDEL` of the
batch. No validation, no state, no events: the physical limit of the design on this machine.
It prints `ready` once it is a member of the group, and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import redis.asyncio as aioredis


async def consume(url: str, stream: str, group: str, name: str, count: int) -> None:
    """Serve the stream until SIGTERM."""
    redis: Any = aioredis.Redis.from_url(
        url, protocol=2, decode_responses=False, socket_timeout=None
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await redis.xgroup_createconsumer(stream, group, name)
    print("ready", flush=True)
    try:
        while not stop.is_set():
            reply = await redis.xreadgroup(group, name, {stream: ">"}, count=count, block=200)
            if not reply:
                continue
            entries = reply[0][1]
            pipe = redis.pipeline(transaction=False)
            ids = []
            for entry_id, fields in entries:
                ids.append(entry_id)
                pipe.xadd(fields[b"r"], {b"t": fields[b"t"]})
            pipe.xack(stream, group, *ids)
            pipe.xdel(stream, *ids)
            await pipe.execute()
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and consume until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m bench.raw_consumer", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--count", type=int, default=64)
    args = parser.parse_args(argv)
    asyncio.run(consume(args.url, args.stream, args.group, args.name, args.count))
    return 0


if __name__ == "__main__":
    sys.exit(main())
