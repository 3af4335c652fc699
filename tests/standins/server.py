"""Building and running a stand-in: tools listed as the real server lists them, served over
streamable HTTP at `/mcp` on loopback by the real MCP SDK.

    python -m tests.standins session-buddy --port 8678
    python -m tests.standins akosha --port 8682

Each tool is a plain async function; `build_server` turns them into SDK tools whose description
and parameter descriptions are copied from the recorded real `tools/list` (so a client sees the
same listing) and whose schemas say what the real ones say (`recorded_style`). `StandInServer`
calls them as the real servers (FastMCP 4) do: a function returning a dict answers compact JSON
text (`json_text`) plus that dict as structured content; one returning text (Session-Buddy's
emoji replies) answers that text plus `{"result": text}` as structured content; `is_error` is
false even for `{"success": false, ...}` / `{"status": "failed", ...}` replies. A tool that
raises answers `is_error` with "Error calling tool 'NAME': MESSAGE"; bad arguments (a wrong type,
an unknown parameter) answer pydantic's message; an unknown tool "Unknown tool: 'NAME'".
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import uvicorn
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp_types import CallToolResult, TextContent
from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.standins.schema import recorded_style, recorded_tools

HOST = "127.0.0.1"
SERVER_NAMES = {"session-buddy": "session-buddy", "akosha": "akosha-mcp"}
SERVER_VERSIONS = {"session-buddy": "0.36.0", "akosha": "0.24.5"}


def json_text(value: Any) -> str:
    """`value` as the real servers' JSON text: compact, UTF-8 as is (pydantic's `to_json`)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


class StandInServer(MCPServer):
    """An SDK server that calls its tools the way the real servers' FastMCP does: arguments
    validated against the function's signature by pydantic (unknown ones refused), errors worded
    as FastMCP words them, and every result sent both as text and as structured content (a text
    result as `{"result": text}`), though no tool lists an output schema."""

    def __init__(self, server: str, tools: Sequence[Tool]) -> None:
        super().__init__(
            SERVER_NAMES[server], version=SERVER_VERSIONS[server], tools=list(tools),
            log_level="WARNING",
        )  # fmt: skip
        self._functions = {tool.name: TypeAdapter(tool.fn) for tool in tools}

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Any = None
    ) -> CallToolResult:
        adapter = self._functions.get(name)
        if adapter is None:
            raise ToolError(f"Unknown tool: {name!r}")
        try:
            result = adapter.validate_python(arguments)  # checks the arguments, then calls
            value = await result if inspect.isawaitable(result) else result
        except ValidationError as exc:
            raise ToolError(str(exc)) from None
        except Exception as exc:
            raise ToolError(f"Error calling tool {name!r}: {exc}") from None
        if isinstance(value, str):
            return CallToolResult(
                content=[TextContent(type="text", text=value)], structured_content={"result": value}
            )
        return CallToolResult(
            content=[TextContent(type="text", text=json_text(value))], structured_content=value
        )


RESET_PATH = "/standin/reset"
"""POST here empties a stand-in (no pools, no records), so one process can serve many tests.
Not an MCP tool: the tool listing stays the real one."""


def build_server(
    server: str,
    functions: Sequence[Callable[..., Any]],
    reset: Callable[[], Awaitable[None]],
) -> MCPServer:
    """A server named like the real one offering `functions` as its tools; `reset` empties its
    state on a POST to RESET_PATH."""
    recorded = recorded_tools(server)
    tools = []
    for fn in functions:
        real = recorded.get(fn.__name__)
        if real is None:
            raise ValueError(f"{server} has no real tool named {fn.__name__!r}")
        tool = Tool.from_function(fn, description=real["description"], structured_output=False)
        tool.parameters = _with_real_descriptions(recorded_style(tool.parameters), real)
        tools.append(tool)
    standin = StandInServer(server, tools)

    @standin.custom_route(RESET_PATH, methods=["POST"], include_in_schema=False)
    async def reset_state(request: Request) -> Response:
        await reset()
        return JSONResponse({"reset": True})

    return standin


def _with_real_descriptions(schema: dict[str, Any], real: dict[str, Any]) -> dict[str, Any]:
    real_props = real.get("inputSchema", {}).get("properties", {})
    for name, prop in schema.get("properties", {}).items():
        described = real_props.get(name, {}).get("description")
        if described is not None:
            prop["description"] = described
    return schema


def make(server: str) -> MCPServer:
    """The stand-in for `server` (`session-buddy` or `akosha`), with fresh in-memory state."""
    if server == "session-buddy":
        from tests.standins.session_buddy import build

        return build()
    if server == "akosha":
        from tests.standins.akosha import build

        return build()
    raise ValueError(f"unknown stand-in {server!r}; choose session-buddy or akosha")


READY_LINE = "stand-in ready"
"""Printed (with the URL) on stdout once the server listens, so a starter awaits it, not a port."""


class _AnnouncingServer(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(f"{READY_LINE} http://{self.config.host}:{self.config.port}/mcp", flush=True)


def serve(server: str, port: int, host: str = HOST) -> None:
    """Run the stand-in for `server` until it is signalled (SIGTERM/SIGINT end it cleanly)."""
    app = make(server).streamable_http_app(streamable_http_path="/mcp", host=host)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    _AnnouncingServer(config).run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.standins",
        description="Run a stand-in MCP server (streamable HTTP at /mcp, no auth).",
    )
    parser.add_argument(
        "server", choices=sorted(SERVER_NAMES), help="which real server to stand in for"
    )
    parser.add_argument("--port", type=int, required=True, help="TCP port on the host")
    parser.add_argument("--host", default=HOST, help=f"address to listen on (default {HOST})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    serve(args.server, args.port, args.host)
    return 0
