"""Errors of the client's waits and idempotency keys, in the hierarchy of `shared.errors`:

InvalidRequest
└── IdempotencyConflict      an idempotency key was re-used for a different request
OrchestratorUnavailable
└── OrchestratorNotRunning   a wait cannot end: no orchestrator is alive to move its task on
NotFound
└── TaskNotFound
    └── TaskStateLost        the record of a task being waited on vanished from Redis
"""

from __future__ import annotations

from shared.errors import InvalidRequest, OrchestratorUnavailable, TaskNotFound


class IdempotencyConflict(InvalidRequest):
    """An idempotency key already names a task whose request differs; nothing was queued."""

    def __init__(self, message: str, key: str, task_id: str) -> None:
        super().__init__(message)
        self.key = key
        self.task_id = task_id


class OrchestratorNotRunning(OrchestratorUnavailable):
    """A wait stopped because no orchestrator is alive to route (or retry) its task, or to
    restart the workers of its pool; the task keeps waiting and can be polled once one runs."""

    def __init__(self, message: str, task_id: str) -> None:
        super().__init__(message)
        self.task_id = task_id


class TaskStateLost(TaskNotFound):
    """The record of a task being waited on is gone (e.g. Redis restarted without
    persistence): its result can never arrive."""

    def __init__(self, message: str, task_id: str) -> None:
        super().__init__(message)
        self.task_id = task_id


def state_lost(task_id: str) -> TaskStateLost:
    """The error of a wait whose task's hash vanished."""
    return TaskStateLost(
        f"state of task {task_id} was lost (its record is gone from Redis: was Redis restarted "
        "without persistence?)",
        task_id,
    )
