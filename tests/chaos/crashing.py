"""A function module that imports in an orchestrator (so a pool naming it passes the spawn
check) but raises at import in a worker process (`python -m worker --pool P ...`): every
worker of such a pool exits non-zero at start, before its first heartbeat."""

from __future__ import annotations

import sys

if "--pool" in sys.argv:
    raise RuntimeError("chaos: tests.chaos.crashing refuses to load in a worker process")


def never(token: str) -> str:
    """Never runs: no worker can import this module."""
    return token
