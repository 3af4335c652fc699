"""Helpers of the MCP facade: the tools' argument checking, argument parsing and error messages.

Every tool is a `StrictTool`: its input schema says `additionalProperties: false` and a call
with an argument the tool does not declare is refused with the nearest valid name, instead of
the SDK's default of dropping it silently (a misspelt `timout` would otherwise run with the
default timeout).

Errors the system raises on purpose become `ToolError`s whose text the model reads: which
argument was wrong and why, which pool or task is unknown, that a queue is full, that no
orchestrator answered, that Redis cannot be reached or did not answer within
`redis_command_timeout`. Anything else is a bug and stays hidden behind the SDK's generic
message (and is logged with its traceback).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase
from mcp_types import ToolAnnotations
from pydantic import ConfigDict, ValidationError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestrator.mcp.params import PROMPT_LIMIT
from shared.codec import describe_validation_error
from shared.config import Settings
from shared.connection import unresponsive
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
from shared.models import MAX_PROMPT_CHARS, RoutingStrategy, payload_problem

_Fn = TypeVar("_Fn", bound=Callable[..., Any])
SHOWN_NAME_CHARS = 64


def unknown_arguments(tool: str, arguments: Mapping[str, Any], known: Sequence[str]) -> str | None:
    """Why `arguments` are refused: each one `tool` does not take, with the nearest valid name."""
    problems = []
    for name in arguments:
        if name in known:
            continue
        shown = name if len(name) <= SHOWN_NAME_CHARS else name[: SHOWN_NAME_CHARS - 3] + "..."
        near = difflib.get_close_matches(name, known, n=1)
        if near:
            hint = f"did you mean {near[0]!r}?"
        elif known:
            hint = f"valid arguments: {', '.join(known)}"
        else:
            hint = f"{tool} takes no arguments"
        problems.append(f"unknown argument {shown!r} ({hint})")
    return "; ".join(problems) or None


class StrictTool(Tool):
    """A tool whose arguments model forbids extras, so unknown arguments are refused."""

    @classmethod
    def strict(cls, fn: Callable[..., Any], annotations: ToolAnnotations | None) -> StrictTool:
        """The tool for `fn`, its arguments model (and so its input schema) closed to extras."""
        tool = cast(StrictTool, cls.from_function(fn, annotations=annotations))  # built by cls
        loose = tool.fn_metadata.arg_model
        config = ConfigDict(extra="forbid")
        namespace = {"model_config": config, "__module__": loose.__module__}
        closed = cast(type[ArgModelBase], type(loose.__name__, (loose,), namespace))
        tool.fn_metadata.arg_model = closed
        tool.parameters = closed.model_json_schema(by_alias=True)
        return tool

    async def run(
        self, arguments: dict[str, Any], context: Any, convert_result: bool = False
    ) -> Any:
        """Refuse unknown arguments by name (pydantic's own message would not say what was
        meant), then run as the SDK does."""
        known = list(self.parameters.get("properties", {}))
        if problem := unknown_arguments(self.name, arguments, known):
            raise ToolError(f"Error executing tool {self.name}: {problem}")
        return await super().run(arguments, context, convert_result)


class ToolSet:
    """The facade's tools, collected by a decorator shaped like `MCPServer.tool()`, each a
    StrictTool; they are handed to the server whole (`MCPServer(tools=...)`)."""

    def __init__(self) -> None:
        self.tools: list[Tool] = []

    def tool(self, annotations: ToolAnnotations | None = None) -> Callable[[_Fn], _Fn]:
        """Register the decorated function as a tool."""

        def add(fn: _Fn) -> _Fn:
            self.tools.append(StrictTool.strict(fn, annotations))
            return fn

        return add


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
        text = str(exc)
        raise ToolError(
            text if text.startswith("no orchestrator") else f"no orchestrator: {text}"
        ) from None
    except ResultTimeout as exc:
        raise ToolError(
            f"timed out: {exc}; poll task_result with task_id={exc.task_id!r}"
        ) from None
    except ExecutorError as exc:
        raise ToolError(f"executor error: {exc}") from None
    except BrokerError as exc:
        raise ToolError(str(exc)) from None
    except RedisTimeoutError:
        raise ToolError(str(unresponsive(settings))) from None
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
    problem = payload_problem(given)
    if problem:
        raise InvalidRequest(problem)
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"prompt has {len(prompt):,} characters; {PROMPT_LIMIT}")
    if (args or kwargs) and call is None:
        raise InvalidRequest("args/kwargs: only a 'call' task takes arguments; set call too")
    data: dict[str, Any] = {"prompt": prompt, "command": command, "call": call}
    if args:
        data["args"] = args
    if kwargs:
        data["kwargs"] = kwargs
    data.update(fields)
    return {k: v for k, v in data.items() if v is not None}
