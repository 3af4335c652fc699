"""The retry policy, one home for both places an attempt ends without a result: a worker whose
task failed (worker/worker.py) and reclaim taking back an attempt lost with its worker or past
its deadline (orchestrator/reclaim.py).

The next attempt waits in the delayed set (`keys.delayed`) for an exponential backoff with full
jitter (`retry_backoff_base` doubling per attempt, capped at `retry_backoff_max`), and the
orchestrator holding the scheduler lease moves it back when it is due. A task's history keeps
its last HISTORY_CAP attempt lines. After `max_attempts` the task is dead-lettered with
`dead_letter_reason`.
"""

from __future__ import annotations

import random
import time
from typing import Any

from shared.codec import TaskDelegate, decode, encode, pack, unpack
from shared.config import Settings
from shared.connection import Pipeline
from shared.errors import MalformedMessage
from shared.models import TaskStatus
from shared.scripts import Scripts

HISTORY_CAP = 20


def retry_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter for the retry after `attempt` failed attempts."""
    return random.uniform(0, min(cap, base * (2 ** (attempt - 1))))


def with_line(history: list[str], line: str) -> list[str]:
    """A task's attempt history with one more line, capped at HISTORY_CAP lines."""
    return [*history, line][-HISTORY_CAP:]


def dead_letter_reason(attempts: int, last_error: str | None) -> str:
    """What a task dead-lettered after its last attempt says."""
    return f"dead-lettered after {attempts} attempt(s); last error: {last_error}"


def retry_member(pool_id: str, again: TaskDelegate, *, home: str = "") -> bytes:
    """The delayed-set member of a next attempt: the pool to return to ('' for the ingress),
    the pool whose slot holds the task's state (`home`) and the entry fields."""
    return pack({"pool": pool_id, "home": home or pool_id, "fields": dict(encode(again))})


def read_retry_member(member: bytes) -> tuple[str, Any]:
    """(pool id or '', decoded message) of a delayed-set member; MalformedMessage if unusable."""
    pool_id, _home, msg = read_retry(member)
    return pool_id, msg


def read_retry(member: bytes) -> tuple[str, str, Any]:
    """(pool id or '', home, decoded message) of a delayed-set member (`retry_member`);
    MalformedMessage if unusable."""
    try:
        data = unpack(member)
        fields = {
            str(k).encode(): v if isinstance(v, bytes) else str(v).encode()
            for k, v in data["fields"].items()
        }
        pool_id = str(data.get("pool") or "")
        return pool_id, str(data.get("home") or pool_id), decode(fields)
    except (KeyError, TypeError, AttributeError) as exc:
        raise MalformedMessage(f"unreadable retry member: {exc!r}") from None


def queue_retry(
    pipe: Pipeline,
    settings: Settings,
    scripts: Scripts,
    msg: TaskDelegate,
    *,
    pool_id: str,
    home: str,
    line: str,
    error: str,
) -> None:
    """Queue the next attempt of `msg` in the delayed set after its backoff, and mark the task
    `retrying` with the error of the attempt that ended. `pool_id` is where the attempt goes
    ('' for the ingress), `home` the pool whose slot holds the task's state."""
    again = TaskDelegate(
        task=msg.task, attempt=msg.attempt + 1, history=with_line(msg.history, line)
    )
    delay = retry_delay(msg.attempt, settings.retry_backoff_base, settings.retry_backoff_max)
    member = retry_member(pool_id, again, home=home)
    pipe.zadd(settings.keys.delayed, {member: time.time() + delay})
    scripts.set_task(
        pipe,
        settings.keys.task_state(msg.task.id, home),
        status=TaskStatus.RETRYING,
        error=error[:2000],
    )
