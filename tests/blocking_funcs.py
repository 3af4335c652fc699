"""A function for supervision tests: it blocks its thread (no cancel can stop it) on its first
run only, so a task handed back or taken back then completes on its next attempt."""

from __future__ import annotations

import os
import time

from tests.sync_client import sync_client


def block_first(token: str, seconds: float) -> str:
    """Block for `seconds` the first time `token` runs; return at once afterwards."""
    client = sync_client(os.environ["MAHAVISHNU_REDIS_URL"])
    prefix = os.environ.get("MAHAVISHNU_KEY_PREFIX", "mhv:")
    try:
        runs = client.hincrby(f"{prefix}test:block_first", token, 1)
    finally:
        client.close()
    if runs == 1:
        time.sleep(seconds)
    return token
