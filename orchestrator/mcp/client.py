"""The outbound MCP client: calls to tools of remote MCP servers over streamable HTTP.

One module for every caller that talks to another MCP server — a delegated pool's backend (a
Session-Buddy or another deployment of this project), memory sync (Session-Buddy, Akosha) — so
they share one way to connect, authenticate, time out and report failures:

    async with RemoteMCP("http://10.0.0.7:8000/mcp", token=TOKEN) as remote:
        names = await remote.tool_names()
        pools = await remote.call("pool_list")          # the tool's structured result

Failures are `shared.errors.RemoteError`s naming the URL (never the token): RemoteUnavailable
when the server cannot be reached or refuses the connection or the token, RemoteToolError
(with the tool's own message) when a tool answers with an error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from shared.config import redact_url
from shared.errors import RemoteToolError, RemoteUnavailable

if TYPE_CHECKING:
    from mcp import Client

# The MCP SDK and its HTTP client (~30 MB, 0.4 s to import) are imported on first use: every
# orchestrator imports this module (delegated pools, memory sync), few of them use it.

DEFAULT_TIMEOUT = 60.0  # seconds one HTTP exchange (a tool call) may take


@dataclass(frozen=True)
class RemoteTool:
    """A tool the remote server lists: its name, description and input schema."""

    name: str
    description: str
    input_schema: dict[str, Any]


class RemoteMCP:
    """A session with one remote MCP server; use it as an async context manager."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        self.url = url
        self._shown = redact_url(url)
        self._headers = dict(headers or {})
        if token:
            self._headers["authorization"] = f"Bearer {token}"
        self._timeout = timeout
        self._connect_timeout = timeout if connect_timeout is None else connect_timeout
        self._stack: AsyncExitStack | None = None
        self._client: Client | None = None

    async def __aenter__(self) -> Self:
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        stack = AsyncExitStack()
        try:
            http = await stack.enter_async_context(
                httpx2.AsyncClient(
                    headers=self._headers,
                    timeout=httpx2.Timeout(self._timeout, connect=self._connect_timeout),
                )
            )
            self._client = await stack.enter_async_context(
                Client(streamable_http_client(self.url, http_client=http))
            )
        except BaseException as exc:
            await stack.aclose()
            task = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
                raise  # the caller is being cancelled (a timeout, a shutdown): not an outage
            raise self._unavailable(exc) from None
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            try:
                await stack.aclose()
            except Exception:  # closing a broken session must not mask `exc`
                if exc is None:
                    raise

    @property
    def client(self) -> Client:
        if self._client is None:
            raise RuntimeError("RemoteMCP is used outside `async with`")
        return self._client

    async def tools(self) -> list[RemoteTool]:
        """The tools the server lists."""
        from mcp.shared.exceptions import MCPError

        try:
            listed = await self.client.list_tools()
        except MCPError as exc:
            raise self._unavailable(exc) from None
        return [
            RemoteTool(t.name, t.description or "", dict(t.input_schema or {}))
            for t in listed.tools
        ]

    async def tool_names(self) -> set[str]:
        """The names of the tools the server lists."""
        return {tool.name for tool in await self.tools()}

    async def call(self, tool: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Call `tool`; return its structured result (or its text, parsed as JSON when it is
        JSON). RemoteToolError when the tool answers with an error."""
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED, TextContent

        try:
            result = await self.client.call_tool(tool, dict(arguments or {}))
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:  # the transport lost the reply: not the tool's
                raise self._unavailable(exc) from None
            raise RemoteToolError(
                f"{tool} on {self._shown} failed: {exc}", self.url, tool
            ) from None
        texts = [c.text for c in result.content if isinstance(c, TextContent)]
        if result.is_error:
            message = " ".join(texts) or "the tool reported an error without a message"
            raise RemoteToolError(f"{tool} on {self._shown}: {message}", self.url, tool)
        if result.structured_content is not None:
            return result.structured_content
        joined = "".join(texts)
        try:
            return json.loads(joined)
        except ValueError:
            return joined

    def _unavailable(self, exc: BaseException) -> RemoteUnavailable:
        reason = _reason(exc)
        return RemoteUnavailable(
            f"MCP server at {self._shown} is not reachable: {reason}", self.url
        )


def _reason(exc: BaseException) -> str:
    """The innermost useful message of an error (the SDK wraps transport errors in groups)."""
    import httpx2

    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return str(exc) or type(exc).__name__
