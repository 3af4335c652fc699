"""The MCP facade: the original's ten pool tools plus task and dead-letter tools.

    mahavishnu mcp                                  # stdio, for desktop and CLI agents
    mahavishnu mcp --http --host 0.0.0.0 --port 8765  # streamable HTTP at /mcp, bearer token

The facade is thin: it validates arguments, publishes into the streams and reads hashes through
one `PoolManager` per server lifetime (created in the lifespan), and holds no pool state of its
own, so any number of facades can serve one Redis. Every tool refuses arguments it does not
declare (support.StrictTool).

Tools: pool_spawn, pool_execute, pool_route_execute, pool_list, pool_monitor, pool_scale,
pool_close, pool_close_all, pool_health, pool_search_memory (the original's ten, same names and
parameters), task_submit, task_status, task_result, task_cancel, pool_dead_letters.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp

from orchestrator.mcp.http import MCP_PATH, BearerAuth, BodyLimit, check_token, transport_security
from orchestrator.mcp.params import FacadeState
from orchestrator.mcp.support import ToolSet
from orchestrator.mcp.tools_pools import register_pool_tools
from orchestrator.mcp.tools_tasks import register_task_tools
from shared.client import PoolManager
from shared.config import Settings, load_settings
from shared.metrics import install as install_metrics
from shared.version import package_version

log = logging.getLogger("mahavishnu.mcp")

DEFAULT_HTTP_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8765

INSTRUCTIONS = """\
Mahavishnu runs tasks on pools of workers over Redis. A task is exactly one of: a prompt (AI CLI
pools; python pools pass it to their default function), a command argv (shell pools), or a call
of a registered function (python pools). pool_execute runs a task on a given pool and
pool_route_execute lets the orchestrators pick one; both wait up to `wait` (default: timeout)
seconds and otherwise return done=false with a task_id to poll with task_result. task_submit
queues without waiting. pool_list / pool_monitor / pool_health show the pools; pool_spawn,
pool_scale and pool_close change them. pool_search_memory searches finished tasks;
pool_dead_letters lists tasks that ran out of attempts and can requeue them. Send a
progressToken with pool_execute, pool_route_execute or task_result to get notifications/progress
as the task moves (queued, routed, running, then each output chunk as the message)."""


def build_server(settings: Settings | None = None) -> MCPServer[FacadeState]:
    """The MCP server with every tool; its lifespan owns one PoolManager."""
    resolved = settings or load_settings()

    @asynccontextmanager
    async def lifespan(_: MCPServer[FacadeState]) -> AsyncIterator[FacadeState]:
        pools = PoolManager(resolved)
        try:
            yield FacadeState(settings=resolved, pools=pools)
        finally:
            await pools.aclose()

    tools = ToolSet()
    register_pool_tools(tools)
    register_task_tools(tools)
    return MCPServer(
        "mahavishnu",
        title="Mahavishnu pools",
        instructions=INSTRUCTIONS,
        version=package_version(),
        lifespan=lifespan,
        tools=tools.tools,
    )


def http_app(
    server: MCPServer[FacadeState],
    settings: Settings,
    *,
    host: str = DEFAULT_HTTP_HOST,
    require_auth: bool = True,
) -> ASGIApp:
    """The streamable HTTP app at /mcp behind the bearer-token check, the body limit and
    Host/Origin checks.

    Raises ConfigError when auth is required without a (long enough) token, or turned off on a
    non-loopback address.
    """
    secret = settings.mcp_http_token.get_secret_value() if settings.mcp_http_token else None
    token = check_token(secret, require_auth=require_auth, host=host)
    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        transport_security=transport_security(host, settings.mcp_allowed_hosts),
        host=host,
    )
    return BearerAuth(BodyLimit(app), token)


async def serve_http(
    settings: Settings,
    *,
    host: str = DEFAULT_HTTP_HOST,
    port: int = DEFAULT_HTTP_PORT,
    require_auth: bool = True,
) -> None:
    """Serve streamable HTTP until interrupted (uvicorn handles SIGINT/SIGTERM)."""
    import uvicorn

    app = http_app(build_server(settings), settings, host=host, require_auth=require_auth)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", lifespan="on")
    log.info(
        "MCP facade on http://%s:%d%s (auth %s)",
        host,
        port,
        MCP_PATH,
        "on" if require_auth else "off",
    )
    await uvicorn.Server(config).serve()


def run_mcp(
    settings: Settings | None = None,
    *,
    http: bool = False,
    host: str = DEFAULT_HTTP_HOST,
    port: int = DEFAULT_HTTP_PORT,
    require_auth: bool = True,
) -> None:
    """Run the facade: stdio, or streamable HTTP at `http://host:port/mcp` (blocks until done).

    HTTP needs `mcp_http_token` unless `require_auth=False` on a loopback address; a missing
    or unusable token raises ConfigError before anything starts.
    """
    resolved = settings or load_settings()
    if http:
        secret = resolved.mcp_http_token.get_secret_value() if resolved.mcp_http_token else None
        check_token(secret, require_auth=require_auth, host=host)
    metrics = install_metrics(resolved, role="MCP facade")  # its own port: metrics_port
    try:
        if not http:
            build_server(resolved).run("stdio")
            return
        anyio.run(_serve_http_from_sync, resolved, host, port, require_auth)
    finally:
        if metrics is not None:
            metrics.close()


async def _serve_http_from_sync(
    settings: Settings, host: str, port: int, require_auth: bool
) -> None:
    await serve_http(settings, host=host, port=port, require_auth=require_auth)
