"""The MCP facade's per-server state and the tool parameters shared by several tools.

The parameter types carry their descriptions and bounds, so the tools' input schemas tell a
model what each argument means and the SDK rejects out-of-range values with the argument named.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from mcp.server.mcpserver import Context
from pydantic import Field

from shared.client import PoolManager
from shared.config import Settings
from shared.models import MAX_PROMPT_CHARS, MAX_TIMEOUT_SECONDS

# said by both transports about an oversized prompt: stdio's tool error, HTTP's body limit
PROMPT_LIMIT = f"a prompt may have at most {MAX_PROMPT_CHARS:,} characters"


@dataclass
class FacadeState:
    """What one facade holds for its lifetime: its settings and one PoolManager."""

    settings: Settings
    pools: PoolManager


ToolContext = Context[FacadeState, Any]


def state_of(ctx: ToolContext) -> FacadeState:
    """The facade state of the server handling this call."""
    return ctx.request_context.lifespan_context


Prompt = Annotated[
    str | None,
    Field(
        description="What to do: a prompt for an AI CLI pool (terminal-claude/terminal-qwen); a "
        "python pool passes it to its default function (the built-in 'echo' returns it). Give "
        "exactly one of prompt, command or call."
    ),
]
Command = Annotated[
    list[str] | None,
    Field(
        description="An argv for a 'shell' pool, e.g. ['git', 'status']; never run through a "
        "shell, and the program must be on the pool's allowed_commands"
    ),
]
Call = Annotated[
    str | None,
    Field(
        description="The name of a function a 'python' pool registers (built-ins: echo, "
        "sleep, noop, fail, add)"
    ),
]
CallArgs = Annotated[list[Any] | None, Field(description="Positional arguments of `call`")]
CallKwargs = Annotated[dict[str, Any] | None, Field(description="Keyword arguments of `call`")]
Timeout = Annotated[
    float | None,
    Field(
        gt=0,
        le=MAX_TIMEOUT_SECONDS,
        description="The task's execution limit in seconds (default: the deployment's "
        "task_default_timeout setting, 300 s unless configured); also how long a waiting call "
        "waits for the result unless `wait` says otherwise",
    ),
]
Wait = Annotated[
    float | None,
    Field(
        ge=0,
        le=MAX_TIMEOUT_SECONDS,
        description="Seconds this call waits for the result (default: timeout). If the task is "
        "not done by then, the answer says so (done=false) with the task_id to poll with "
        "task_result; 0 returns at once",
    ),
]
Labels = Annotated[
    dict[str, str] | list[str] | None,
    Field(description="Labels every eligible pool must carry, as {'gpu': 'true'} or ['gpu=true']"),
]
Tags = Annotated[
    list[str] | None, Field(description="Free-form tags kept in the task's memory record")
]
MaxAttempts = Annotated[
    int | None, Field(ge=1, le=100, description="Deliveries before the task is dead-lettered")
]
IdempotencyKey = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=256,
        description="Re-submitting with the same key returns the first task's id",
    ),
]
ShareWith = Annotated[
    list[str] | None,
    Field(description="Pool ids whose inboxes also get the result (RESULT_SHARE)"),
]
PoolSelector = Annotated[
    str | None,
    Field(
        description="Routing strategy: round_robin, least_loaded, random or affinity (default: "
        "the deployment's pool_routing_strategy)"
    ),
]
AffinityKey = Annotated[
    str | None,
    Field(
        max_length=256,
        description="Tasks with the same key go to the same pool while it is eligible "
        "(implies pool_selector='affinity' when no selector is given)",
    ),
]
QueueTimeout = Annotated[
    float | None,
    Field(
        gt=0,
        le=MAX_TIMEOUT_SECONDS,
        description="Seconds a routed task may wait for an eligible pool before it fails",
    ),
]
PoolId = Annotated[str, Field(min_length=1, max_length=64, description="The pool's id")]
TaskId = Annotated[str, Field(min_length=1, max_length=64, description="The task's id")]
