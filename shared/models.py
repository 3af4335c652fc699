"""Validated values that cross process boundaries: tasks, results, pools, load, statuses.

Every model rejects bad input with a message that names the field and the value, so a caller
that sends an oversized prompt, a negative timeout or `min_workers > max_workers` learns exactly
what to fix.
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.arq_options import arq_options
from shared.remote_config import RemoteSpec

MAX_PROMPT_CHARS = 1_000_000
MAX_ARGV_ITEMS = 256
MAX_ARG_CHARS = 100_000
MAX_LABELS = 32
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600.0
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ID_RE = re.compile(ID_PATTERN)
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}$")


def new_id(kind: str) -> str:
    """A short, time-ordered, unique id such as `t-018f3a2b4c5d-9f2e1a7b` (kind `t`): the time
    in milliseconds, then 32 random bits."""
    while True:
        try:
            suffix = _ID_SUFFIXES.popleft()  # atomic: threads never share one
            break
        except IndexError:
            chunk = os.urandom(4 * _ID_SUFFIX_BATCH).hex()
            _ID_SUFFIXES.extend(chunk[i : i + 8] for i in range(0, len(chunk), 8))
    return f"{kind}-{int(time.time() * 1000):012x}-{suffix}"


_ID_SUFFIX_BATCH = 256
_ID_SUFFIXES: deque[str] = deque()
"""The random parts of the next ids, read from os.urandom a batch at a time (one read per id
cost more than the rest of `new_id`, called for every task, and again by every dump of a task
without its defaults: pydantic compares a field with a default factory to a fresh default)."""
if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_ID_SUFFIXES.clear)  # a forked child must not repeat them


class PoolType(StrEnum):
    """Where a pool's workers run. The original's names are accepted as aliases."""

    LOCAL = "local"
    DELEGATED = "delegated"
    KUBERNETES = "kubernetes"
    ARQ = "arq"


POOL_TYPE_ALIASES: dict[str, PoolType] = {
    "mahavishnu": PoolType.LOCAL,
    "session-buddy": PoolType.DELEGATED,
    "session_buddy": PoolType.DELEGATED,
    "k8s": PoolType.KUBERNETES,
}


def parse_pool_type(value: str) -> PoolType:
    """Resolve a pool type or one of its aliases; raise ValueError naming the choices."""
    name = value.strip().lower()
    if name in POOL_TYPE_ALIASES:
        return POOL_TYPE_ALIASES[name]
    try:
        return PoolType(name)
    except ValueError:
        choices = sorted([*(t.value for t in PoolType), *POOL_TYPE_ALIASES])
        raise ValueError(
            f"unknown pool type {value!r}; choose one of {', '.join(choices)}"
        ) from None


class WorkerType(StrEnum):
    """How a worker executes a task."""

    PYTHON = "python"
    SHELL = "shell"
    TERMINAL_CLAUDE = "terminal-claude"
    TERMINAL_QWEN = "terminal-qwen"


class RoutingStrategy(StrEnum):
    """How the orchestrator picks among eligible pools (docs/architecture.md)."""

    ROUND_ROBIN = "round_robin"
    LEAST_LOADED = "least_loaded"
    RANDOM = "random"
    AFFINITY = "affinity"


class PoolStatus(StrEnum):
    """Lifecycle of a pool."""

    STARTING = "starting"
    RUNNING = "running"
    DEGRADED = "degraded"
    SCALING = "scaling"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"


ACCEPTING_STATUSES = frozenset(
    {PoolStatus.STARTING, PoolStatus.RUNNING, PoolStatus.DEGRADED, PoolStatus.SCALING}
)
"""The pool statuses in which a pool takes work (the Lua pool checks in shared/scripts.py are
built from this set)."""


class TaskStatus(StrEnum):
    """Lifecycle of a task; the last four are final."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD_LETTERED = "dead_lettered"

    @property
    def is_final(self) -> bool:
        """True when the task will not change again."""
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.DEAD_LETTERED}
)
"""The task statuses that never change again (the Lua guard in shared/scripts.py is built
from this set)."""


class TaskKind(StrEnum):
    """What a task asks for: a prompt for an AI CLI or a default function, an argv, a call."""

    PROMPT = "prompt"
    COMMAND = "command"
    CALL = "call"


_EXECUTOR_KINDS: dict[WorkerType, frozenset[TaskKind]] = {
    WorkerType.PYTHON: frozenset({TaskKind.PROMPT, TaskKind.CALL}),
    WorkerType.SHELL: frozenset({TaskKind.COMMAND}),
    WorkerType.TERMINAL_CLAUDE: frozenset({TaskKind.PROMPT}),
    WorkerType.TERMINAL_QWEN: frozenset({TaskKind.PROMPT}),
}


def executor_runs(worker_type: WorkerType, kind: TaskKind) -> bool:
    """Whether a pool whose workers are `worker_type` can run a task of `kind`."""
    return kind in _EXECUTOR_KINDS[worker_type]


def _check_id(value: str, field: str) -> str:
    if not _ID_RE.match(value):
        raise ValueError(
            f"{field} {value!r} is not a valid id: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return value


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels are allowed, got {len(labels)}")
    for key, value in labels.items():
        if not _LABEL_RE.match(key):
            raise ValueError(f"label name {key!r} is not valid: use letters, digits, '_./-'")
        if len(value) > 256 or "\n" in value:
            raise ValueError(f"label {key}={value!r} is not valid: at most 256 chars, one line")
    return labels


PAYLOAD_FIELDS = ("prompt", "command", "call")


def payload_problem(given: Sequence[str], names: Sequence[str] = PAYLOAD_FIELDS) -> str | None:
    """The one check, and the one message, of a task's payload: exactly one of prompt, command
    or call. `given` names what was given, `names` how the caller's surface spells the three
    (the CLI's `--prompt`, ...). None when the payload is right."""
    if len(given) == 1:
        return None
    got = " and ".join(given) if given else "none"
    return (
        f"a task needs exactly one of {names[0]}, {names[1]} or {names[2]} (a prompt for AI "
        f"and python pools, a command for shell pools, a call of a python pool's function); "
        f"got {got}"
    )


class TaskSpec(BaseModel):
    """One unit of work. Exactly one of `prompt`, `command` or `call` says what to do."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(default_factory=lambda: new_id("t"))
    prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    command: list[str] | None = Field(default=None, min_length=1, max_length=MAX_ARGV_ITEMS)
    call: str | None = Field(default=None, min_length=1, max_length=128)
    args: list[Any] = Field(default_factory=list, max_length=MAX_ARGV_ITEMS)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    pool_id: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    affinity_key: str | None = Field(default=None, max_length=256)
    strategy: RoutingStrategy | None = None
    timeout: float = Field(default=300.0, gt=0, le=MAX_TIMEOUT_SECONDS)
    queue_timeout: float = Field(default=60.0, gt=0, le=MAX_TIMEOUT_SECONDS)
    max_attempts: int = Field(default=3, ge=1, le=100)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=256)
    reply_to: str | None = None
    tags: list[str] = Field(default_factory=list, max_length=32)
    share_with: list[str] = Field(default_factory=list, max_length=16)
    # what happens to the task if its pool closes before it ran: a routed task (no pool_id) is
    # always routed again; one sent to a pool directly fails ("closed before the task ran")
    # unless it allows being routed to another eligible pool
    reroute_on_close: bool = False
    submitted_at: float = Field(default_factory=time.time)

    @field_validator("share_with")
    @classmethod
    def _share_targets_are_ids(cls, value: list[str]) -> list[str]:
        return [_check_id(v, "share_with pool id") for v in value]

    @field_validator("id")
    @classmethod
    def _id_is_valid(cls, value: str) -> str:
        return _check_id(value, "task id")

    @field_validator("pool_id")
    @classmethod
    def _pool_id_is_valid(cls, value: str | None) -> str | None:
        return None if value is None else _check_id(value, "pool_id")

    @field_validator("reply_to")
    @classmethod
    def _reply_to_is_valid(cls, value: str | None) -> str | None:
        return None if value is None else _check_id(value, "reply_to")

    @field_validator("labels")
    @classmethod
    def _labels_are_valid(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)

    @field_validator("command")
    @classmethod
    def _command_is_valid(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for arg in value:
            if len(arg) > MAX_ARG_CHARS or "\x00" in arg:
                raise ValueError(f"command argument {arg[:40]!r}... is too long or holds NUL")
        if not value[0].strip():
            raise ValueError("command[0] (the program) must not be empty")
        return value

    @model_validator(mode="after")
    def _exactly_one_payload(self) -> Self:
        problem = payload_problem([n for n in PAYLOAD_FIELDS if getattr(self, n) is not None])
        if problem:
            raise ValueError(problem)
        if self.strategy is RoutingStrategy.AFFINITY and not self.affinity_key:
            raise ValueError("strategy 'affinity' needs an affinity_key")
        return self

    @property
    def kind(self) -> TaskKind:
        """Which of the three payloads this task carries."""
        if self.command is not None:
            return TaskKind.COMMAND
        if self.call is not None:
            return TaskKind.CALL
        return TaskKind.PROMPT

    def describe(self, limit: int = 200) -> str:
        """A one-line human summary of what the task asks for (for memory records and logs)."""
        if self.command is not None:
            text = " ".join(self.command)
        elif self.call is not None:
            text = f"{self.call}(*{self.args!r}, **{self.kwargs!r})"
        else:
            text = self.prompt or ""
        return text if len(text) <= limit else text[: limit - 1] + "…"


class TaskResult(BaseModel):
    """The outcome of a task. Keeps the original's keys and adds task_id, attempts, exit_code."""

    model_config = ConfigDict(extra="ignore")

    task_id: str
    pool_id: str | None = None
    worker_id: str | None = None
    status: TaskStatus
    output: Any = None
    error: str | None = None
    exit_code: int | None = None
    attempts: int = 0
    duration: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def ok(self) -> bool:
        """True when the task completed."""
        return self.status is TaskStatus.COMPLETED

    @classmethod
    def trusted(cls, **values: Any) -> Self:
        """A result of values known valid, one for each field, left unvalidated: what
        `model_construct(**values)` makes, without its per-field look-ups of aliases and
        defaults (~8 µs a result; this takes under 1 µs)."""
        if values.keys() != cls.__pydantic_fields__.keys():
            raise TypeError(f"a trusted TaskResult takes all of its fields, not {sorted(values)}")
        result = cls.__new__(cls)
        object.__setattr__(result, "__dict__", values)
        object.__setattr__(result, "__pydantic_fields_set__", set(values))
        object.__setattr__(result, "__pydantic_extra__", None)
        object.__setattr__(result, "__pydantic_private__", None)
        return result


class PoolSpec(BaseModel):
    """A pool's configuration; validated when spawned, stored in the pool hash."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: new_id("p"))
    name: str = Field(min_length=1, max_length=64)
    pool_type: PoolType = PoolType.LOCAL
    worker_type: WorkerType = WorkerType.PYTHON
    min_workers: int = Field(default=1, ge=0, le=1000)
    max_workers: int = Field(default=10, ge=1, le=1000)
    concurrency: int = Field(default=4, ge=1, le=10_000)
    labels: dict[str, str] = Field(default_factory=dict)
    auto_scale: bool = False
    max_queue: int = Field(default=10_000, ge=1, le=10_000_000)
    inbox_max: int = Field(default=1_000, ge=1, le=1_000_000)
    functions: dict[str, str] = Field(default_factory=dict)
    default_function: str = "echo"
    allowed_commands: list[str] = Field(default_factory=list)
    command_template: list[str] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    remote: RemoteSpec | None = None  # a delegated pool's remote MCP server (no secrets)

    @field_validator("pool_type", mode="before")
    @classmethod
    def _resolve_alias(cls, value: object) -> object:
        return parse_pool_type(value) if isinstance(value, str) else value

    @field_validator("id")
    @classmethod
    def _id_is_valid(cls, value: str) -> str:
        return _check_id(value, "pool id")

    @field_validator("name")
    @classmethod
    def _name_is_valid(cls, value: str) -> str:
        return _check_id(value, "pool name")

    @field_validator("labels")
    @classmethod
    def _labels_are_valid(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)

    @field_validator("functions")
    @classmethod
    def _functions_are_valid(cls, value: dict[str, str]) -> dict[str, str]:
        for name, target in value.items():
            module, _, attr = target.partition(":")
            if not name or not module or not attr:
                raise ValueError(
                    f"function {name!r} -> {target!r} must be 'module:function' (trusted config)"
                )
        return value

    @model_validator(mode="after")
    def _bounds_are_consistent(self) -> Self:
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"min_workers ({self.min_workers}) must not exceed max_workers ({self.max_workers})"
            )
        if self.worker_type is WorkerType.SHELL and not self.allowed_commands:
            raise ValueError("a 'shell' pool needs allowed_commands (the programs it may run)")
        if self.pool_type is PoolType.ARQ:
            self._check_arq()
        if self.pool_type is not PoolType.DELEGATED and self.remote is not None:
            raise ValueError(f"remote is only for 'delegated' pools, not {self.pool_type}")
        return self

    def _check_arq(self) -> None:
        """An arq pool runs `call` and `prompt` tasks as arq jobs: its options are validated
        and stored with their defaults (shared/arq_options.py)."""
        if self.worker_type is not WorkerType.PYTHON:
            raise ValueError(
                f"arq pool {self.name!r}: worker_type must be 'python' (its tasks are arq "
                f"function calls), not {str(self.worker_type)!r}"
            )
        self.options = arq_options(self.name, self.options).model_dump()


class LoadMetrics(BaseModel):
    """A pool's load as stored in its `load` hash and used for routing."""

    workers: int = 0  # serving: live heartbeat, not draining
    local_workers: int = 0  # serving workers started by the pool's supervisor
    external_workers: int = 0  # serving workers started elsewhere (other hosts, by hand)
    draining: int = 0
    stuck: int = 0  # draining past their drain deadline
    capacity: int = 0
    in_flight: int = 0
    queued: int = 0
    completed: int = 0
    failed: int = 0
    avg_ms: float = 0.0
    updated_at: float = 0.0

    @property
    def load(self) -> float:
        """(in_flight + queued) / capacity; infinite when the pool has no capacity."""
        if self.capacity <= 0:
            return float("inf")
        return (self.in_flight + self.queued) / self.capacity


class PoolInfo(BaseModel):
    """What `list_pools` reports for one pool: its spec, status and load."""

    spec: PoolSpec
    status: PoolStatus
    created_at: float
    target_workers: int
    load: LoadMetrics
    detail: str = ""
    supervised: bool = True  # an orchestrator holds the pool's lease
    restarts: int = 0
    last_restart_at: float = 0.0
    last_restart_reason: str = ""
    remote_health: str = ""  # a delegated pool: 'ok' or why its remote is not, as last probed

    @property
    def shown_status(self) -> str:
        """The status to show: `unsupervised` for a live pool no orchestrator supervises."""
        if not self.supervised and self.status in (
            PoolStatus.STARTING,
            PoolStatus.RUNNING,
            PoolStatus.DEGRADED,
            PoolStatus.SCALING,
            PoolStatus.CLOSING,
        ):
            return "unsupervised"
        return str(self.status)
