"""`mahavishnu`: the command line of the pools (README.md, "Run it").

    mahavishnu up [--demo]                 broker + orchestrator + a default pool, in one command
    mahavishnu orchestrator | worker | mcp  the long-running processes
    mahavishnu pool spawn|list|exec|route|scale|close|close-all|health|monitor|search|logs
    mahavishnu task submit|status|result|cancel|dead-letters   (cli/tasks.py)
    mahavishnu top | inspect KEY | bench

Every command that reports something takes `--json` (one JSON document on stdout, nothing
else there). Errors the system reports on purpose exit 1 with one `error: ...` line on stderr;
usage errors exit 2. The commands are thin: they talk to Redis through `shared.client`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.cli import render
from orchestrator.cli import up as cli_up
from orchestrator.cli.common import (
    JsonOpt,
    MetricsPortOpt,
    cli_settings,
    fail,
    guard,
    run_async,
    setup_logging,
    with_metrics_port,
)
from orchestrator.cli.pools import pool_app
from orchestrator.cli.tasks import task_app

app = typer.Typer(
    name="mahavishnu",
    help="Mahavishnu pools: a distributed task system on Redis Streams.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from shared.version import package_version

        print(f"mahavishnu {package_version()}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Mahavishnu pools: a distributed task system on Redis Streams."""


app.add_typer(pool_app, name="pool")
app.add_typer(task_app, name="task")


# ---------------------------------------------------------------------------------- processes


@app.command()
def up(
    workers: Annotated[
        int | None, typer.Option(min=0, help="Workers of the pool (default from settings).")
    ] = None,
    demo: Annotated[bool, typer.Option(help="Run a demo batch, print a summary, exit.")] = False,
    tasks: Annotated[int, typer.Option(min=1, max=1_000_000, help="Tasks of --demo.")] = 200,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds the demo may take.")] = 120.0,
    log_level: Annotated[str, typer.Option(help="Log level of the orchestrator.")] = "WARNING",
    json_out: JsonOpt = False,
) -> None:
    """Start everything on this machine: broker if needed, an orchestrator and a pool."""
    settings = cli_settings()
    setup_logging(log_level, settings)
    code = run_async(
        settings, cli_up.run_up, settings, workers=workers, demo=demo, tasks=tasks, timeout=timeout,
        json_out=json_out,
    )  # fmt: skip
    raise typer.Exit(code)


@app.command("orchestrator")
def orchestrator_cmd(
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Run an orchestrator until SIGTERM or Ctrl-C (it routes, supervises and scales pools)."""
    from orchestrator.orchestrator import serve

    settings = with_metrics_port(cli_settings(), metrics_port)
    setup_logging(log_level, settings)
    logging.getLogger("mahavishnu").info(
        "orchestrator on %s, prefix %s", settings.redis_url_redacted, settings.key_prefix
    )
    raise typer.Exit(run_async(settings, serve, settings))


@app.command("worker")
def worker_cmd(
    pool: Annotated[str, typer.Option(help="Id of the pool to serve.")],
    concurrency: Annotated[int | None, typer.Option(min=1, help="Tasks run at once.")] = None,
    burst: Annotated[bool, typer.Option(help="Exit when the queue is empty.")] = False,
    worker_id: Annotated[str | None, typer.Option(help="Consumer name (default: new).")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Run one worker of a pool until SIGTERM or Ctrl-C (it drains first)."""
    from worker.worker import serve

    settings = with_metrics_port(cli_settings(), metrics_port)
    setup_logging(log_level, settings)
    code = run_async(
        settings, serve, settings, pool, concurrency=concurrency, burst=burst, worker_id=worker_id
    )
    raise typer.Exit(code)


@app.command("mcp")
def mcp_cmd(
    http: Annotated[bool, typer.Option(help="Serve streamable HTTP instead of stdio.")] = False,
    host: Annotated[str, typer.Option(help="HTTP address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")] = 8765,
    no_auth: Annotated[
        bool,
        typer.Option("--no-auth", help="HTTP without a bearer token (loopback addresses only)."),
    ] = False,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Run the MCP facade (stdio by default) with the pool tools.

    HTTP needs a bearer token (MAHAVISHNU_MCP_HTTP_TOKEN) unless bound to loopback with
    --no-auth (or mcp_http_require_auth: false).
    """
    settings = with_metrics_port(cli_settings(), metrics_port)
    from orchestrator.mcp.server import run_mcp

    require_auth = settings.mcp_http_require_auth and not no_auth
    guard(settings, run_mcp, settings, http=http, host=host, port=port, require_auth=require_auth)


@app.command("top")
def top(
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between refreshes.")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Watch the pools live: rates, p50/p99 sparklines, workers, dead letters (Ctrl-C stops).

    With --json (or --once) it prints one snapshot and exits."""
    from orchestrator.cli.top import run_top

    settings = cli_settings()
    run_async(settings, run_top, settings, interval=interval, once=once, json_out=json_out)


@app.command(
    "bench",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def bench_cmd(ctx: typer.Context) -> None:
    """Run the benchmark harness (`python -m bench`, in a checkout); options pass through."""
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / "bench" / "__main__.py").is_file():
        fail(
            "mahavishnu bench runs the harness of a source checkout (bench/ is not installed "
            "with the package): clone the repository and run `make bench` there"
        )
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    from bench.__main__ import main as bench_main

    raise typer.Exit(bench_main(list(ctx.args)))


# ---------------------------------------------------------------------------------- inspect


@app.command("inspect")
def inspect_cmd(
    key: Annotated[str, typer.Argument(help="A key, with or without the prefix.")],
    count: Annotated[int, typer.Option(min=1, help="Entries or members to show.")] = 20,
    last: Annotated[bool, typer.Option(help="Show the newest entries instead.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Decode one of our Redis keys: hash, stream, sorted set, set or string."""
    from orchestrator.cli.inspect import inspect_key
    from shared.connection import connect

    settings = cli_settings()

    async def inspect() -> dict[str, Any]:
        redis = connect(settings)
        try:
            return await inspect_key(redis, settings, key, count=count, last=last)
        finally:
            await redis.aclose()

    doc = run_async(settings, inspect)
    if json_out:
        render.emit_json(doc)
    else:
        render.stdout_console().print(render.inspect_view(doc))


def main() -> None:
    """Entry point of the `mahavishnu` console script and `python -m orchestrator`."""
    app(prog_name="mahavishnu")
