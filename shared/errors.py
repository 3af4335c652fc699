"""Every error the project raises on purpose, in one place.

    MahavishnuError
    ├── ConfigError            a setting is invalid (names the field, the value and the source)
    ├── InvalidRequest         bad input from a caller: a task, a pool spec, a CLI flag
    │   └── IdempotencyConflict  an idempotency key re-used for a different request
    ├── BrokerError            Redis cannot be reached or answered something unusable
    │   └── BrokerUnresponsive  Redis accepted the connection but did not answer in time
    ├── QueueFull              a bounded stream (ingress, a pool backlog, an inbox) is at its limit
    │   └── InboxFull          a pool's inbox is full: the message was not sent
    ├── NotFound
    │   ├── PoolNotFound       no live pool has this id
    │   └── TaskNotFound       no task record has this id (never submitted, or expired)
    │       └── TaskStateLost  the record of a waited task vanished (Redis lost its data)
    ├── PoolUnavailable        the pool exists but is closing, closed or failed
    ├── OrchestratorUnavailable  no orchestrator acted on a control command in time
    │   └── OrchestratorNotRunning  a wait needs an orchestrator and none is alive
    ├── ResultTimeout          the caller stopped waiting; the task goes on and can be polled
    ├── ExecutorError          a pool's executor cannot run (missing CLI, command not allowed)
    ├── PoolBackendError       the platform of a pool's workers refused a request (Kubernetes)
    ├── MalformedMessage       a stream entry could not be decoded (it is dead-lettered)
    └── RemoteError            a remote MCP server (orchestrator/mcp/client.py)
        ├── RemoteUnavailable  could not be reached, refused the connection or the token
        ├── RemoteToolError    answered a tool call with an error (its message is kept)
        └── RemoteReplyError   answered in a shape the caller cannot use (a delegated pool's remote)

Callers catch `MahavishnuError` for anything the system reports deliberately; anything else is a
bug.
"""

from __future__ import annotations


class MahavishnuError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(MahavishnuError):
    """A setting is invalid; the message names the field, the value and where it came from."""


class InvalidRequest(MahavishnuError):
    """A caller sent something invalid: the message names the field and the bad value."""


class BrokerError(MahavishnuError):
    """Redis could not be reached, or answered something the system cannot use."""


class BrokerUnresponsive(BrokerError):
    """Redis did not answer a command within `redis_command_timeout` (paused, overloaded or
    behind a broken network); the command may or may not have run."""

    def __init__(self, url: str, seconds: float) -> None:
        super().__init__(f"Redis at {url} did not answer within {seconds:g} s")
        self.url = url
        self.seconds = seconds


class QueueFull(MahavishnuError):
    """A bounded stream is at its limit; nothing was written."""


class InboxFull(QueueFull):
    """A pool's inbox is at its limit; the message was not sent."""


class NotFound(MahavishnuError):
    """Something named by id does not exist."""


class PoolNotFound(NotFound):
    """No live pool has this id."""


class TaskNotFound(NotFound):
    """No task record has this id: never submitted, or its record expired."""


class PoolUnavailable(MahavishnuError):
    """The pool exists but cannot take work: it is closing, closed or failed."""


class OrchestratorUnavailable(MahavishnuError):
    """No orchestrator acted on a control command within the wait."""


class ResultTimeout(MahavishnuError):
    """The caller stopped waiting for a result; the task itself goes on and can be polled."""

    def __init__(self, message: str, task_id: str) -> None:
        super().__init__(message)
        self.task_id = task_id


class ExecutorError(MahavishnuError):
    """A pool's executor cannot run: a missing CLI, a command off the allow-list, a bad function."""


class PoolBackendError(MahavishnuError):
    """The platform a pool's workers run on refused or failed a request (e.g. the Kubernetes
    API: conflict, invalid object, forbidden, not found); the message names the object, the
    status and the platform's reason."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status of the API's answer (0: none, e.g. unreachable)


class MalformedMessage(MahavishnuError):
    """A stream entry could not be decoded; the entry is dead-lettered with this message."""


def inbox_error(pool_id: str, exc: Exception) -> Exception:
    """The error a sender sees when a RESULT_SHARE cannot be written to a pool's inbox (from the
    server's INBOXFULL / NOPOOL reply; anything else is returned as it is)."""
    if "INBOXFULL" in str(exc):
        return InboxFull(f"inbox of pool {pool_id!r} is full; the result was not sent")
    if "NOPOOL" in str(exc):
        return PoolNotFound(f"no pool with id {pool_id!r}")
    return exc


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


class RemoteError(MahavishnuError):
    """A remote MCP server (another deployment, Session-Buddy, Akosha) failed a call."""

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message)
        self.url = url


class RemoteUnavailable(RemoteError):
    """The remote MCP server could not be reached, or refused the connection or the token."""


class RemoteToolError(RemoteError):
    """The remote MCP server answered a tool call with an error."""

    def __init__(self, message: str, url: str, tool: str) -> None:
        super().__init__(message, url)
        self.tool = tool


class RemoteReplyError(RemoteError):
    """The remote MCP server answered, but in a shape the caller cannot use (a delegated
    pool's remote: the message names the pool, the remote and what was wrong)."""
