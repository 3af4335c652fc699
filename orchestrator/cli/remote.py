"""The `pool spawn` options of a delegated pool's remote (`--remote-url`, `--remote-kind`, ...).

They map one to one onto `shared.remote_config.RemoteSpec`, which validates them; the token is
never an option's value: `--remote-token-env NAME` names a variable, `--remote-token-file PATH`
a file, read by the orchestrator's and the bridges' host.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from shared.errors import InvalidRequest

PANEL = "Delegated pools (--type delegated / session-buddy)"

RemoteUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--remote-url",
        help="The remote MCP endpoint, e.g. http://10.0.0.7:8765/mcp (default for "
        "session-buddy: the session_buddy_pool_url setting).",
        rich_help_panel=PANEL,
    ),
]
RemoteKindOpt = Annotated[
    str | None,
    typer.Option(
        "--remote-kind",
        help="session-buddy, mahavishnu (another deployment: federation) or tool.",
        rich_help_panel=PANEL,
    ),
]
RemoteTokenEnvOpt = Annotated[
    str | None,
    typer.Option(
        "--remote-token-env",
        help="Name of the environment variable that holds the remote's bearer token.",
        rich_help_panel=PANEL,
    ),
]
RemoteTokenFileOpt = Annotated[
    str | None,
    typer.Option(
        "--remote-token-file", help="File that holds the bearer token.", rich_help_panel=PANEL
    ),
]
RemoteToolOpt = Annotated[
    str | None,
    typer.Option("--remote-tool", help="kind tool: the tool to call.", rich_help_panel=PANEL),
]
RemoteArgumentsOpt = Annotated[
    str | None,
    typer.Option(
        "--remote-arguments",
        help="kind tool: the tool's arguments as JSON; strings may hold {prompt}, {task_id}, "
        "{timeout}.",
        rich_help_panel=PANEL,
    ),
]
RemoteOutputOpt = Annotated[
    str | None,
    typer.Option(
        "--remote-output",
        help="kind tool: dotted path of the output in the reply (default: all of it).",
        rich_help_panel=PANEL,
    ),
]
RemoteErrorOpt = Annotated[
    str | None,
    typer.Option(
        "--remote-error",
        help="kind tool: dotted path of an error message in the reply.",
        rich_help_panel=PANEL,
    ),
]
RemotePoolOpt = Annotated[
    str | None,
    typer.Option(
        "--remote-pool",
        help="kind mahavishnu: the remote pool to run on (default: the remote routes).",
        rich_help_panel=PANEL,
    ),
]
RemoteBackendOpt = Annotated[
    str | None,
    typer.Option(
        "--remote-backend",
        help="kind session-buddy: placeholder (default) or llm.",
        rich_help_panel=PANEL,
    ),
]
RemoteReflectOpt = Annotated[
    bool,
    typer.Option(
        "--remote-reflect-tasks",
        help="kind session-buddy: the remote stores a reflection per task.",
        rich_help_panel=PANEL,
    ),
]
RemoteConnectTimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--remote-connect-timeout", help="Seconds to connect (default 10).", rich_help_panel=PANEL
    ),
]
RemoteCallTimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--remote-call-timeout",
        help="Seconds one remote call may take (default 60).",
        rich_help_panel=PANEL,
    ),
]


def remote_options(
    url: str | None,
    kind: str | None,
    token_env: str | None,
    token_file: str | None,
    tool: str | None,
    arguments: str | None,
    output: str | None,
    error: str | None,
    pool: str | None,
    backend: str | None,
    reflect_tasks: bool,
    connect_timeout: float | None,
    call_timeout: float | None,
) -> dict[str, Any] | None:
    """The `remote` of a pool spec from the given options; None when none was given."""
    given: dict[str, Any] = {
        "url": url,
        "kind": kind,
        "token_env": token_env,
        "token_file": token_file,
        "tool": tool,
        "output": output,
        "error": error,
        "pool": pool,
        "backend": backend,
        "reflect_tasks": reflect_tasks or None,
        "connect_timeout": connect_timeout,
        "call_timeout": call_timeout,
    }
    if arguments is not None:
        try:
            given["arguments"] = json.loads(arguments)
        except ValueError as exc:
            raise InvalidRequest(f"--remote-arguments is not JSON: {exc}") from None
        if not isinstance(given["arguments"], dict):
            raise InvalidRequest("--remote-arguments must be a JSON object of the tool's arguments")
    remote = {name: value for name, value in given.items() if value is not None}
    if not remote:
        return None
    if "kind" not in remote and "url" in remote:
        raise InvalidRequest("--remote-url needs --remote-kind (session-buddy, mahavishnu or tool)")
    return remote
