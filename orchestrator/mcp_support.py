"""Helpers of the MCP facade: argument parsing and error messages.

Errors the system raises on purpose become `ToolError`s whose text the model reads: which
argument was wrong and why, which pool or task is unknown, that a queue is full, that no
orchestrator answered, that Redis cannot be reached. Anything else is a bug and stays hidden
behind the SDK's generic message (and is logged with its traceback).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError
from pydantic import ValidationError
from redis.exceptions import RedisError

from shared.codec import describe_validation_error
from shared.config import Settings
from shared.errors import (
    BrokerError,
    ExecutorError,
    InvalidRequest,
    MahavishnuError,
    OrchestratorUnavailable,
    PoolNotFound,
    PoolUnavailable,
    QueueFull,
    ResultTimeout,
    TaskNotFound,
)
from shared.models import RoutingStrategy


@contextmanager
def tool_errors(settings: Settings) -> Iterator[None]:
    """Turn the system's deliberate errors into ToolErrors with a message for the model."""
    try:
        yield
    except ToolError:
        raise
    except ValidationError as exc:
        raise ToolError(f"invalid argument: {describe_validation_error(exc)}") from None
    except InvalidRequest as exc:
        raise ToolError(f"invalid argument: {exc}") from None
    except PoolNotFound as exc:
        raise ToolError(f"unknown pool: {exc}; pool_list shows the live pools") from None
    except TaskNotFound as exc:
        raise ToolError(f"unknown task: {exc}") from None
    except QueueFull as exc:
        raise ToolError(f"{exc}; nothing was queued") from None
    except PoolUnavailable as exc:
        raise ToolError(f"pool unavailable: {exc}") from None
    except OrchestratorUnavailable as exc:
        raise ToolError(f"no orchestrator: {exc}") from None
    except ResultTimeout as exc:
        raise ToolError(
            f"timed out: {exc}; poll task_result with task_id={exc.task_id!r}"
        ) from None
    except ExecutorError as exc:
        raise ToolError(f"executor error: {exc}") from None
    except BrokerError as exc:
        raise ToolError(str(exc)) from None
    except (RedisError, OSError) as exc:
        raise ToolError(
            f"Redis at {settings.redis_url_redacted} is not reachable or failed: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    except MahavishnuError as exc:
        raise ToolError(str(exc)) from None


def parse_labels(labels: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """Labels as a mapping, or as a list of `key=value` strings."""
    if labels is None:
        return {}
    if isinstance(labels, Mapping):
        return {str(k): str(v) for k, v in labels.items()}
    parsed: dict[str, str] = {}
    for item in labels:
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise InvalidRequest(f"labels: {item!r} is not 'key=value'")
        parsed[key.strip()] = value.strip()
    return parsed


def parse_selector(value: str | None) -> RoutingStrategy | None:
    """A routing strategy by name (case and '-'/'_' do not matter); None keeps the default."""
    if value is None or not value.strip():
        return None
    name = value.strip().lower().replace("-", "_")
    try:
        return RoutingStrategy(name)
    except ValueError:
        choices = ", ".join(s.value for s in RoutingStrategy)
        raise InvalidRequest(f"pool_selector={value!r}: choose one of {choices}") from None


def task_payload(
    *,
    prompt: str | None,
    command: list[str] | None,
    call: str | None,
    args: list[Any] | None,
    kwargs: dict[str, Any] | None,
    **fields: Any,
) -> dict[str, Any]:
    """A task mapping from tool arguments (None means: not given), validated later by TaskSpec."""
    given = [
        n for n, v in (("prompt", prompt), ("command", command), ("call", call)) if v is not None
    ]
    if len(given) != 1:
        got = f"got {' and '.join(given)}" if given else "got none"
        raise InvalidRequest(
            f"prompt/command/call: give exactly one of them ({got}): prompt for AI CLI and "
            "python pools, command for shell pools, call for a python pool's function"
        )
    if (args or kwargs) and call is None:
        raise InvalidRequest("args/kwargs: only a 'call' task takes arguments; set call too")
    data: dict[str, Any] = {"prompt": prompt, "command": command, "call": call}
    if args:
        data["args"] = args
    if kwargs:
        data["kwargs"] = kwargs
    data.update(fields)
    return {k: v for k, v in data.items() if v is not None}
