"""The remote of a `delegated` pool: which MCP server runs its tasks, and how it is called.

A delegated pool's bridge (orchestrator/pools/delegated*.py) forwards each task to a remote MCP
server over streamable HTTP. `RemoteSpec` is that configuration, validated with the pool spec
(`PoolSpec.remote`) and stored in the pool hash. It never holds a secret: the token is named by
an environment variable (`token_env`) or a file (`token_file`) that the orchestrator's and the
bridge's host read when they connect, and a URL with a user or password in it is refused.

Kinds:
- `session-buddy`: Session-Buddy 0.36's pool tools (`create_pool`, `execute_on_pool`,
  `check_pool_health`, `delete_pool`); the remote pool's id is `mahavishnu-<pool id>`.
- `mahavishnu`: another deployment of this project through its MCP facade (`pool_execute` or
  `pool_route_execute`, `task_result`, `task_cancel`): federation.
- `tool`: any MCP tool: `tool`, an `arguments` template and an `output` path into the reply.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_REMOTE_CONCURRENCY = 3  # Session-Buddy's pools have 3 workers: the original's default
PLACEHOLDERS = ("prompt", "task_id", "timeout")
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_]+)\}")
_PATH_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class RemoteKind(StrEnum):
    """What the remote MCP server is, which decides the tools the bridge calls."""

    SESSION_BUDDY = "session-buddy"
    MAHAVISHNU = "mahavishnu"
    TOOL = "tool"


REQUIRED_TOOLS: dict[RemoteKind, tuple[str, ...]] = {
    RemoteKind.SESSION_BUDDY: ("create_pool", "execute_on_pool", "check_pool_health"),
    RemoteKind.MAHAVISHNU: (
        "pool_execute",
        "pool_route_execute",
        "task_submit",
        "task_result",
        "task_cancel",
    ),
    RemoteKind.TOOL: (),  # the configured tool
}
"""The tools a remote of each kind must list; checked when the pool starts."""


class RemoteSpec(BaseModel):
    """Where a delegated pool's tasks run and how (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=1, max_length=2048, description="the MCP endpoint, e.g. .../mcp")
    kind: RemoteKind = Field(description="session-buddy, mahavishnu or tool")
    token_env: str | None = Field(default=None, description="env variable holding the token")
    token_file: str | None = Field(default=None, description="file holding the token")
    tool: str | None = Field(default=None, max_length=128, description="kind tool: the tool")
    arguments: dict[str, Any] = Field(
        default_factory=dict,
        description="kind tool: the tool's arguments; strings may hold {prompt}, {task_id}, "
        "{timeout} (a value that is exactly '{timeout}' becomes the number)",
    )
    output: str = Field(
        default="",
        max_length=256,
        description="kind tool: dotted path of the output in the reply (JSON), '' = all of it",
    )
    error: str = Field(
        default="",
        max_length=256,
        description="kind tool: dotted path of an error message in the reply ('' = none)",
    )
    pool: str | None = Field(
        default=None, max_length=64, description="kind mahavishnu: the remote pool (else routed)"
    )
    backend: str = Field(
        default="placeholder", max_length=64, description="kind session-buddy: pool backend"
    )
    model: str | None = Field(default=None, max_length=128, description="session-buddy: model")
    reflect_tasks: bool = Field(default=False, description="session-buddy: write reflections")
    connect_timeout: float = Field(default=10.0, gt=0, le=300)
    call_timeout: float = Field(default=60.0, gt=0, le=3600)
    health_interval: float = Field(default=5.0, gt=0, le=3600)

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep or scheme.lower() not in ("http", "https") or not rest.strip("/"):
            raise ValueError(
                f"remote url {value[:200]!r} must be an http:// or https:// URL of an MCP "
                "endpoint, e.g. http://10.0.0.7:8765/mcp"
            )
        if "@" in rest.split("/", 1)[0]:
            raise ValueError(
                "remote url must not hold a user or password; give the token with "
                "token_env (--remote-token-env) or token_file (--remote-token-file)"
            )
        return value

    @field_validator("token_env")
    @classmethod
    def _env_name_is_valid(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_RE.match(value):
            raise ValueError(
                f"remote token_env {value!r} must be the name of an environment variable "
                "(letters, digits, '_'), not the token itself"
            )
        return value

    @field_validator("output", "error")
    @classmethod
    def _path_is_valid(cls, value: str) -> str:
        if value and not _PATH_RE.match(value):
            raise ValueError(f"reply path {value!r} must be keys joined by '.', e.g. result.text")
        return value

    @model_validator(mode="after")
    def _kind_has_what_it_needs(self) -> Self:
        if self.token_env and self.token_file:
            raise ValueError("give the remote token by token_env or by token_file, not both")
        if self.kind is RemoteKind.TOOL:
            if not self.tool:
                raise ValueError("a remote of kind 'tool' needs tool (the MCP tool to call)")
            unknown = sorted(_placeholders(self.arguments) - set(PLACEHOLDERS))
            if unknown:
                raise ValueError(
                    f"remote arguments use unknown placeholder(s) {unknown}; use "
                    + ", ".join("{" + p + "}" for p in PLACEHOLDERS)
                )
            if "prompt" not in _placeholders(self.arguments):
                raise ValueError("remote arguments must pass the task's {prompt} somewhere")
        else:
            given = [n for n in ("tool", "output", "error") if getattr(self, n)] + (
                ["arguments"] if self.arguments else []
            )
            if given:
                raise ValueError(
                    f"{', '.join(given)}: only for a remote of kind 'tool', not {self.kind}"
                )
        if self.pool is not None and self.kind is not RemoteKind.MAHAVISHNU:
            raise ValueError(f"pool: only for a remote of kind 'mahavishnu', not {self.kind}")
        return self

    def token(self) -> str | None:
        """The token from its variable or file, read now; ValueError naming the source (never
        the token) when it cannot be read."""
        if self.token_env:
            value = os.environ.get(self.token_env, "").strip()
            if not value:
                raise ValueError(f"environment variable {self.token_env} (the token) is not set")
            return value
        if self.token_file:
            try:
                value = Path(self.token_file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"token file {self.token_file} cannot be read: {exc}") from None
            if not value:
                raise ValueError(f"token file {self.token_file} is empty")
            return value
        return None

    def required_tools(self) -> tuple[str, ...]:
        """The tools the remote must list."""
        return (self.tool,) if self.tool else REQUIRED_TOOLS[self.kind]


def _placeholders(value: Any) -> set[str]:
    """The {name} placeholders in the strings of a JSON-like value."""
    if isinstance(value, str):
        return set(_PLACEHOLDER_RE.findall(value))
    if isinstance(value, dict):
        return set().union(*(_placeholders(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_placeholders(v) for v in value))
    return set()


def fill_arguments(template: Any, prompt: str, task_id: str, timeout: float) -> Any:
    """The tool's arguments for one task: placeholders replaced in every string; a string that
    is exactly '{timeout}' becomes the number."""
    if isinstance(template, str):
        if template == "{timeout}":
            return timeout
        values = {"prompt": prompt, "task_id": task_id, "timeout": f"{timeout:g}"}
        return _PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), m.group(0)), template)
    if isinstance(template, dict):
        return {k: fill_arguments(v, prompt, task_id, timeout) for k, v in template.items()}
    if isinstance(template, list):
        return [fill_arguments(v, prompt, task_id, timeout) for v in template]
    return template
