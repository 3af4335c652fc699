"""Functions the chaos pools register: each run is counted in Redis, so a test can tell how
many times a task really executed."""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from tests.sync_client import sync_client

_client: Any = None


def _redis() -> Any:
    global _client
    if _client is None:
        _client = sync_client(os.environ["MAHAVISHNU_REDIS_URL"])
    return _client


def runs_key() -> str:
    """The hash counting runs per token, under the deployment's prefix."""
    return f"{os.environ.get('MAHAVISHNU_KEY_PREFIX', 'mhv:')}chaos:runs"


def record(token: str, seconds: float = 0.0) -> str:
    """Count one run of `token`, sleep, and return the token."""
    for attempt in range(50):  # the broker may be restarting under us
        try:
            _redis().hincrby(runs_key(), token, 1)
            break
        except redis.ConnectionError:
            time.sleep(0.1 * (attempt + 1))
    if seconds:
        time.sleep(seconds)
    return token


def explode(token: str) -> None:
    """Always fail."""
    raise RuntimeError(f"chaos task {token} fails on purpose")
