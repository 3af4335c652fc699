"""`mahavishnu pool ...`: spawn, use, watch and close pools."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from orchestrator.cli import arq as arq_opts
from orchestrator.cli import remote as remote_opts
from orchestrator.cli import render
from orchestrator.cli import up as cli_up
from orchestrator.cli.bars import stderr_progress
from orchestrator.cli.common import (
    AffinityOpt,
    ArgOpt,
    ArgvArg,
    AttemptsOpt,
    CallOpt,
    CommandOpt,
    FollowOpt,
    IdemOpt,
    JsonOpt,
    KwargOpt,
    LabelOpt,
    PromptFileOpt,
    PromptOpt,
    QueueTimeoutOpt,
    StrategyOpt,
    TagOpt,
    TimeoutOpt,
    cli_settings,
    client,
    guard,
    read_prompt,
    run_async,
)
from orchestrator.cli.follow import final_result, show_final
from orchestrator.memory.search import search_all
from shared.config import Settings
from shared.errors import PoolNotFound, PoolUnavailable
from shared.models import ACCEPTING_STATUSES, PoolInfo, PoolStatus

if TYPE_CHECKING:
    from collections.abc import Callable

    from shared.client import PoolManager
    from shared.models import TaskResult, TaskSpec

CLOSE_POLL = 0.5  # seconds between looks at a closing pool

pool_app = typer.Typer(help="Spawn, use, watch and close pools.", no_args_is_help=True)


@pool_app.command("spawn")
def pool_spawn(
    pool_type: Annotated[
        str | None,
        typer.Option("--type", help="local (mahavishnu), delegated (session-buddy), arq…"),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Pool name (default: generated).")] = None,
    min_workers: Annotated[int | None, typer.Option(help="Fewest workers.")] = None,
    max_workers: Annotated[int | None, typer.Option(help="Most workers.")] = None,
    worker_type: Annotated[
        str | None, typer.Option(help="python, shell, terminal-claude or terminal-qwen.")
    ] = None,
    concurrency: Annotated[int | None, typer.Option(help="Tasks per worker at once.")] = None,
    label: Annotated[list[str] | None, typer.Option(help="Label k=v. Repeatable.")] = None,
    auto_scale: Annotated[bool, typer.Option(help="Scale on backlog.")] = False,
    function: Annotated[
        list[str] | None, typer.Option(help="name=module:func to register. Repeatable.")
    ] = None,
    allow_command: Annotated[
        list[str] | None, typer.Option(help="Program a shell pool may run. Repeatable.")
    ] = None,
    max_queue: Annotated[int | None, typer.Option(help="Backlog limit.")] = None,
    arq_function: arq_opts.ArqFunctionOpt = None,
    arq_allow: arq_opts.ArqAllowOpt = None,
    arq_redis_url: arq_opts.ArqRedisUrlOpt = None,
    arq_password_env: arq_opts.ArqPasswordEnvOpt = None,
    arq_queue: arq_opts.ArqQueueOpt = None,
    arq_on_job_timeout: arq_opts.ArqOnJobTimeoutOpt = None,
    pool_id: Annotated[
        str | None,
        typer.Option(
            "--id", help="Pool id (default: generated; a spawn of an existing id changes nothing)."
        ),
    ] = None,
    options: Annotated[
        str | None,
        typer.Option(help='Backend options as JSON, e.g. \'{"kubernetes": {"namespace": "x"}}\'.'),
    ] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once requested.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Seconds to wait for running.")] = None,
    json_out: JsonOpt = False,
    remote_url: remote_opts.RemoteUrlOpt = None,
    remote_kind: remote_opts.RemoteKindOpt = None,
    remote_token_env: remote_opts.RemoteTokenEnvOpt = None,
    remote_token_file: remote_opts.RemoteTokenFileOpt = None,
    remote_tool: remote_opts.RemoteToolOpt = None,
    remote_arguments: remote_opts.RemoteArgumentsOpt = None,
    remote_output: remote_opts.RemoteOutputOpt = None,
    remote_error: remote_opts.RemoteErrorOpt = None,
    remote_pool: remote_opts.RemotePoolOpt = None,
    remote_backend: remote_opts.RemoteBackendOpt = None,
    remote_reflect_tasks: remote_opts.RemoteReflectOpt = False,
    remote_connect_timeout: remote_opts.RemoteConnectTimeoutOpt = None,
    remote_call_timeout: remote_opts.RemoteCallTimeoutOpt = None,
) -> None:
    """Ask the orchestrators for a new pool and wait until it runs."""
    settings = cli_settings()
    arq = arq_opts.arq_options(
        arq_function, arq_allow, arq_redis_url, arq_password_env, arq_queue, arq_on_job_timeout
    )

    async def spawn() -> None:
        remote = remote_opts.remote_options(
            remote_url, remote_kind, remote_token_env, remote_token_file, remote_tool,
            remote_arguments, remote_output, remote_error, remote_pool, remote_backend,
            remote_reflect_tasks, remote_connect_timeout, remote_call_timeout,
        )  # fmt: skip
        async with client(settings) as pools:
            spec = pools.pool_spec(
                pool_type,
                None,
                name=name,
                min_workers=min_workers,
                max_workers=max_workers,
                worker_type=worker_type,
                concurrency=concurrency,
                labels=render.pairs(label, "--label"),
                auto_scale=auto_scale,
                functions=render.pairs(function, "--function"),
                allowed_commands=allow_command or None,
                max_queue=max_queue,
                id=pool_id,
                options=arq_opts.pool_options(options, arq),
                remote=remote,
            )
            arq_opts.check_pool_type(arq, spec.pool_type)
            await pools.spawn_pool(config=spec, wait=not no_wait, timeout=timeout)
            info = None if no_wait else await pools.get_pool(spec.id)
        if json_out:
            doc = render.pool_document(info) if info else {"spec": spec.model_dump(mode="json")}
            render.emit_json({"pool_id": spec.id, "status": "requested", **doc})
            return
        kind = f"{spec.pool_type}/{spec.worker_type}"
        state = f"is {info.status}, {info.target_workers} worker(s)" if info else "was requested"
        render.stdout_console().print(f"pool [bold]{spec.id}[/] ({spec.name}, {kind}) {state}")

    run_async(settings, spawn)


@pool_app.command("list")
def pool_list(json_out: JsonOpt = False) -> None:
    """List the live pools with their status and load."""
    settings = cli_settings()

    async def list_pools() -> None:
        async with client(settings) as pools:
            found = await pools.list_pools()
        if json_out:
            render.emit_json([render.pool_document(p) for p in found])
        elif not found:
            render.stdout_console().print("no pools; start one with `mahavishnu pool spawn`")
        else:
            render.stdout_console().print(render.pools_table(found))

    run_async(settings, list_pools)


@pool_app.command("exec")
def pool_exec(
    pool_id: Annotated[str, typer.Argument(help="The pool to run on.")],
    argv: ArgvArg = None,
    prompt: PromptOpt = None,
    prompt_file: PromptFileOpt = None,
    call: CallOpt = None,
    arg: ArgOpt = None,
    kwarg: KwargOpt = None,
    command: CommandOpt = False,
    timeout: TimeoutOpt = None,
    max_attempts: AttemptsOpt = None,
    idempotency_key: IdemOpt = None,
    tag: TagOpt = None,
    follow: FollowOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Run a task on one pool and print its result (exit 1 unless it completed)."""
    settings = cli_settings()

    def task() -> TaskSpec:
        return render.build_task(
            settings, prompt=read_prompt(prompt, prompt_file), call=call, args=arg,
            kwargs=kwarg, command=command,
            argv=argv, timeout=timeout, max_attempts=max_attempts, pool_id=pool_id,
            idempotency_key=idempotency_key, tags=tag,
        )  # fmt: skip

    run_task(settings, task, routed=False, follow=follow, json_out=json_out)


@pool_app.command("route")
def pool_route(
    argv: ArgvArg = None,
    prompt: PromptOpt = None,
    prompt_file: PromptFileOpt = None,
    call: CallOpt = None,
    arg: ArgOpt = None,
    kwarg: KwargOpt = None,
    command: CommandOpt = False,
    strategy: StrategyOpt = None,
    affinity_key: AffinityOpt = None,
    label: LabelOpt = None,
    queue_timeout: QueueTimeoutOpt = None,
    timeout: TimeoutOpt = None,
    max_attempts: AttemptsOpt = None,
    idempotency_key: IdemOpt = None,
    tag: TagOpt = None,
    follow: FollowOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Let the orchestrators pick a pool for a task; print its result."""
    settings = cli_settings()

    def task() -> TaskSpec:
        return render.build_task(
            settings, prompt=read_prompt(prompt, prompt_file), call=call, args=arg,
            kwargs=kwarg, command=command,
            argv=argv, timeout=timeout, max_attempts=max_attempts, strategy=strategy,
            affinity_key=affinity_key, labels=render.pairs(label, "--label"),
            queue_timeout=queue_timeout,
            idempotency_key=idempotency_key, tags=tag,
        )  # fmt: skip

    run_task(settings, task, routed=True, follow=follow, json_out=json_out)


def run_task(
    settings: Settings,
    make_task: Callable[[], TaskSpec],
    *,
    routed: bool,
    follow: bool,
    json_out: bool,
) -> None:
    """Submit the task `make_task` builds (its errors one line, like every error), wait as long
    as it may take, and print its result; exit 1 unless it completed."""

    async def execute() -> tuple[TaskResult, bool]:
        task = make_task()
        async with client(settings) as pools:
            task_id = await pools.submit(task)
            bound = render.wait_bound(settings, task, routed=routed)
            return await final_result(pools, task_id, bound, follow=follow, json_out=json_out)

    result, printed = run_async(settings, execute)
    show_final(result, printed, follow=follow, json_out=json_out)


@pool_app.command("scale")
def pool_scale(
    pool_id: Annotated[str, typer.Argument(help="The pool to scale.")],
    workers: Annotated[int, typer.Argument(help="Target number of workers.")],
    wait: Annotated[bool, typer.Option(help="Wait until the pool runs again.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Set a pool's target number of workers (within its min and max)."""
    settings = cli_settings()

    async def scale() -> None:
        async with client(settings) as pools:
            await pools.scale(pool_id, workers, wait=wait)
        if json_out:
            render.emit_json({"pool_id": pool_id, "workers": workers})
        else:
            render.stdout_console().print(f"pool [bold]{pool_id}[/] scales to {workers} worker(s)")

    run_async(settings, scale)


@pool_app.command("close")
def pool_close(
    pool_id: Annotated[str, typer.Argument(help="The pool to close.")],
    wait: Annotated[
        bool, typer.Option("--wait", help="Show progress until closed (no limit unless --timeout).")
    ] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once requested.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Seconds to wait for closed.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Close a pool: its workers drain and stop."""
    if wait and no_wait:
        raise typer.BadParameter("--wait and --no-wait exclude each other", param_hint="--wait")
    if timeout is not None and not timeout > 0:
        raise typer.BadParameter(
            f"{timeout:g}: give a number of seconds above 0", param_hint="--timeout"
        )
    settings = cli_settings()
    if wait:
        follow_close(settings, pool_id, timeout)
        state = "closed"
    else:

        async def close() -> None:
            async with client(settings) as pools:
                await pools.close_pool(pool_id, wait=not no_wait, timeout=timeout)

        run_async(settings, close)
        state = "close requested" if no_wait else "closed"
    if json_out:
        render.emit_json({"pool_id": pool_id, "status": state})
    else:
        render.stdout_console().print(f"pool [bold]{pool_id}[/] {state}")


def follow_close(settings: Settings, pool_id: str, timeout: float | None) -> None:
    """Request the close, then print the pool's progress on stderr until it is closed.

    Ctrl-C stops the waiting only: the pool goes on closing, and the message says so.
    """
    requested = False

    async def follow() -> None:
        nonlocal requested
        async with client(settings) as pools:
            await pools.close_pool(pool_id, wait=False)
            requested = True
            started = time.monotonic()
            shown = ""
            while True:
                try:
                    info = await pools.get_pool(pool_id)
                except PoolNotFound:
                    return  # its record expired: closed long ago
                if info.status is PoolStatus.CLOSED:
                    return
                queued = await pools.redis.xlen(pools.keys.pool_tasks(pool_id))
                progress = close_progress(info, queued, await pools.live_workers(pool_id))
                waited = time.monotonic() - started
                if progress != shown:
                    print(f"pool {pool_id}: {progress} ({waited:.0f}s)", file=sys.stderr)
                    shown = progress
                if timeout is not None and waited >= timeout:
                    raise PoolUnavailable(
                        f"pool {pool_id!r} did not close within {timeout:g}s; it is {progress} "
                        "and goes on closing"
                    )
                await asyncio.sleep(CLOSE_POLL)

    def run() -> None:
        try:
            asyncio.run(follow())
        except KeyboardInterrupt:
            if not requested:
                raise
            print(
                f"interrupted: stopped waiting; pool {pool_id} goes on closing "
                f"(`mahavishnu pool close {pool_id} --wait` follows it again)",
                file=sys.stderr,
            )
            raise typer.Exit(130) from None

    guard(settings, run)


def close_progress(info: PoolInfo, queued: int, workers: int) -> str:
    """Where a closing pool is: its status and detail, tasks left, workers left. A pool that
    still takes work has not seen the close yet (an orchestrator carries it out)."""
    if info.status in ACCEPTING_STATUSES:
        state = f"closing requested (still {info.status}: no orchestrator has taken it yet)"
    else:
        state = str(info.status)
        if info.detail and info.detail != state:
            state += f" ({info.detail})"
    return (
        f"{state}, {queued} task(s) left in its stream ({info.load.in_flight} running), "
        f"{workers} worker(s) left"
    )


@pool_app.command("close-all")
def pool_close_all(
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once requested.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Seconds to wait per pool.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Close every live pool."""
    settings = cli_settings()

    async def close_all() -> None:
        async with client(settings) as pools:
            if no_wait:
                closed = await pools.close_all(wait=False)
            else:
                closed = await close_all_with_progress(pools, timeout)
        if json_out:
            render.emit_json({"closed": closed})
        else:
            render.stdout_console().print(f"closed {len(closed)} pool(s): {' '.join(closed)}")

    run_async(settings, close_all)


async def close_all_with_progress(pools: PoolManager, timeout: float | None) -> list[str]:
    """`close_all` with a bar on stderr counting the pools that finished draining."""
    from shared.state import live_pool_ids

    ids = await live_pool_ids(pools.redis, pools.settings)
    with stderr_progress() as progress:
        bar = progress.add_task("closing pools (draining)", total=len(ids))

        async def close(pool_id: str) -> None:
            await pools.close_pool(pool_id, wait=True, timeout=timeout)
            progress.advance(bar)

        await asyncio.gather(*(close(pool_id) for pool_id in ids))
    return ids


@pool_app.command("logs")
def pool_logs(
    pool_id: Annotated[str, typer.Argument(help="The pool whose workers' logs to show.")],
    worker: Annotated[
        str | None, typer.Option(help="One worker (a pod of a kubernetes pool); default: all.")
    ] = None,
    tail: Annotated[int, typer.Option(min=0, max=100_000, help="Last lines per worker.")] = 100,
    json_out: JsonOpt = False,
) -> None:
    """Print the last lines the pool's workers wrote (kubernetes: pod logs via the API server;
    local: the log files on this host)."""
    from orchestrator.pools.logs import read_pool_logs

    settings = cli_settings()

    async def read() -> dict[str, list[str]]:
        async with client(settings) as pools:
            info = await pools.get_pool(pool_id)
        return await read_pool_logs(settings, info.spec, worker, tail)

    found = run_async(settings, read)
    if json_out:
        render.emit_json({"pool_id": pool_id, "workers": found})
        return
    out = render.stdout_console()
    for worker_id, lines in found.items():
        if len(found) > 1:
            out.print(f"[bold]==> {worker_id} <==[/]")
        for line in lines:
            out.print(line, markup=False, highlight=False, soft_wrap=True)  # one line each


@pool_app.command("health")
def pool_health(json_out: JsonOpt = False) -> None:
    """Health of the broker, the orchestrators and every pool (exit 1 when unhealthy)."""
    settings = cli_settings()

    async def health() -> dict[str, Any]:
        async with client(settings) as pools:
            return await pools.health_check()

    report = run_async(settings, health)
    if json_out:
        render.emit_json(report)
    else:
        render.stdout_console().print(render.health_view(report))
    if not report.get("healthy"):
        raise typer.Exit(1)


@pool_app.command("search")
def pool_search(
    query: Annotated[str, typer.Argument(help="Words to look for in finished tasks.")],
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Most hits to show.")] = 20,
    pool: Annotated[
        list[str] | None, typer.Option("--pool", help="Search these pools only (repeatable).")
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            help="local, session-buddy, akosha or all (default: all when memory sync is "
            "enabled, else local)."
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Search finished tasks in the local memory records and the memory services, best first."""
    settings = cli_settings()
    chosen = source or ("all" if settings.memory_aggregation_enabled else "local")

    async def search() -> Any:
        async with client(settings) as pools:
            return await search_all(
                pools.redis, settings, query, limit=limit, pool_ids=pool or None, source=chosen
            )

    found = run_async(settings, search)
    for warning in found.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    hits = [h.as_dict() for h in found.hits]
    if json_out:
        render.emit_json(
            {
                "query": query,
                "sources": found.sources,
                "scanned": found.scanned,
                "warnings": found.warnings,
                "hits": hits,
            }
        )
        return
    table = Table(title=f"{len(hits)} hit(s); {found.scanned} local record(s) read")
    for column in ("score", "sources", "task", "pool", "status", "what", "output"):
        table.add_column(column, overflow="fold")
    for h in found.hits:
        output = h.record.output[:200] if h.record else ""
        table.add_row(
            f"{h.score:.4f}",
            ",".join(h.sources),
            h.task_id,
            h.pool_id,
            h.status,
            h.text[:200],
            output,
        )
    render.stdout_console().print(table)


@pool_app.command("monitor")
def pool_monitor(
    pool_id: Annotated[
        str | None, typer.Argument(help="Only this pool (with its workers).")
    ] = None,
    watch: Annotated[bool, typer.Option(help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between refreshes.")] = 1.0,
    json_out: JsonOpt = False,
) -> None:
    """Workers, in-flight, queued, completed, failed and mean latency per pool."""
    if watch and json_out:
        raise typer.BadParameter(
            "--json prints one snapshot; leave out --watch", param_hint="--json"
        )
    settings = cli_settings()
    run_async(
        settings,
        cli_up.monitor,
        settings,
        pool_id,
        watch=watch,
        interval=interval,
        json_out=json_out,
    )
