"""`python -m tests.chaos.lingering_worker --pool P`: a worker (`python -m worker`) whose
deferred acknowledgement never goes alone (`ACK_LINGER` of an hour), so a scenario can kill it
while its last flush's acknowledgement is outstanding."""

from __future__ import annotations

import sys

from worker import worker
from worker.__main__ import main

worker.ACK_LINGER = 3600.0

if __name__ == "__main__":
    sys.exit(main())
