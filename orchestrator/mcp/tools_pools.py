"""The MCP facade's pool tools: spawn, list, monitor, scale, close, health, memory, dead letters.

The original's names and parameters are kept (pool_spawn's pool_type still takes 'mahavishnu'
and 'session-buddy'); every answer is a pydantic model with stable field names.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from mcp_types import ToolAnnotations
from pydantic import Field

from orchestrator.mcp.models import (
    CloseAllResult,
    CloseResult,
    DeadLetterModel,
    DeadLettersResult,
    HealthResult,
    MemoryHitModel,
    MemorySearchResult,
    MemorySyncModel,
    MonitorResult,
    MonitorTotals,
    PoolListResult,
    PoolMemoryModel,
    PoolMetrics,
    PoolSummary,
    ScaleResult,
    SpawnResult,
)
from orchestrator.mcp.params import Labels, PoolId, ToolContext, state_of
from orchestrator.mcp.support import ToolSet, parse_labels, tool_errors
from orchestrator.memory.search import FederatedHit, search_all
from orchestrator.memory.stats import memory_report
from shared.client import PoolManager
from shared.config import Settings
from shared.dead_letters import DeadLetter
from shared.errors import InvalidRequest, MahavishnuError, PoolNotFound, PoolUnavailable
from shared.models import ACCEPTING_STATUSES, PoolInfo, PoolStatus
from shared.remote_config import RemoteSpec

READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
DESTRUCTIVE = ToolAnnotations(destructive_hint=True, open_world_hint=False)
WaitFlag = Annotated[bool, Field(description="Wait until the orchestrator has carried it out")]
WaitLimit = Annotated[
    float | None,
    Field(gt=0, le=3600, description="Seconds to wait (default: the spawn_timeout setting)"),
]
CloseWait = Annotated[
    float | None,
    Field(
        gt=0,
        le=3600,
        description="Seconds to wait (default: drain_grace + heartbeat_ttl + 10, the longest a "
        "close normally takes); a pool still draining then is reported with closed=false",
    ),
]


def close_wait(settings: Settings, timeout: float | None) -> float:
    """How long a close waits: as given, else as long as a drain plus a heartbeat may take."""
    if timeout is not None:
        return timeout
    return settings.drain_grace + settings.heartbeat_ttl + 10.0


def _letter_model(letter: DeadLetter) -> DeadLetterModel:
    return DeadLetterModel(
        entry_id=letter.entry_id,
        task_id=letter.task_id,
        pool_id=letter.pool_id,
        reason=letter.reason,
        attempts=letter.attempts,
        at=letter.at,
        requeueable=letter.message is not None,
        requeue_problem=letter.problem,
        history=letter.history,
    )


async def close_one(
    pools: PoolManager, pool_id: str, wait: bool, timeout: float | None
) -> CloseResult:
    """Close a pool; a pool still draining when the wait ends is reported, not an error."""
    try:
        await pools.close_pool(pool_id, wait=wait, timeout=timeout)
    except PoolUnavailable as exc:
        info = await pools.get_pool(pool_id)
        if info.status is not PoolStatus.CLOSING:
            raise
        return CloseResult(pool_id=pool_id, status=str(info.status), closed=False, message=str(exc))
    info = await pools.get_pool(pool_id)
    closed = info.status is PoolStatus.CLOSED
    message = "closed" if closed else "close requested; its workers drain, then it closes"
    return CloseResult(pool_id=pool_id, status=str(info.status), closed=closed, message=message)


async def close_or_report(
    pools: PoolManager, pool_id: str, wait: bool, timeout: float | None
) -> CloseResult:
    """close_one, with a deliberate error reported in the result (for closing many pools)."""
    try:
        return await close_one(pools, pool_id, wait, timeout)
    except MahavishnuError as exc:
        return CloseResult(pool_id=pool_id, status="unknown", closed=False, message=str(exc))


def _totals(metrics: list[PoolMetrics]) -> MonitorTotals:
    completed = sum(m.completed for m in metrics)
    weighted = sum(m.avg_ms * m.completed for m in metrics)
    return MonitorTotals(
        pools=len(metrics),
        workers=sum(m.workers for m in metrics),
        in_flight=sum(m.in_flight for m in metrics),
        queued=sum(m.queued for m in metrics),
        completed=completed,
        failed=sum(m.failed for m in metrics),
        avg_ms=round(weighted / completed, 3) if completed else 0.0,
    )


def _hit_model(hit: FederatedHit) -> MemoryHitModel:
    r = hit.record
    return MemoryHitModel(
        task_id=hit.task_id,
        pool_id=hit.pool_id,
        worker_id=r.worker_id if r else "",
        status=hit.status,
        prompt=r.prompt if r else "",
        output=r.output if r else "",
        error=r.error if r else "",
        duration=r.duration if r else 0.0,
        finished_at=r.finished_at if r else 0.0,
        tags=list(r.tags) if r else [],
        score=round(hit.score, 6),
        entry_id=r.entry_id if r else "",
        sources=hit.sources,
        source_scores=hit.source_scores,
        text=hit.text,
    )


def register_pool_tools(mcp: ToolSet) -> None:
    """Add the pool tools to `mcp`."""

    @mcp.tool()
    async def pool_spawn(
        ctx: ToolContext,
        pool_type: Annotated[
            str | None,
            Field(
                description="local (alias mahavishnu), delegated (alias session-buddy), "
                "kubernetes or arq; default: the deployment's default_pool_type"
            ),
        ] = None,
        name: Annotated[str | None, Field(description="A name (default: generated)")] = None,
        min_workers: Annotated[
            int | None,
            Field(
                description="Workers the pool starts with and never goes below (default: the "
                "deployment's pool_default_min_workers)"
            ),
        ] = None,
        max_workers: Annotated[
            int | None,
            Field(
                description="Most workers pool_scale or auto_scale may give the pool (default: "
                "the deployment's pool_default_max_workers, at least min_workers)"
            ),
        ] = None,
        worker_type: Annotated[
            str | None,
            Field(description="python (default), shell, terminal-claude or terminal-qwen"),
        ] = None,
        labels: Labels = None,
        auto_scale: Annotated[
            bool | None,
            Field(
                description="Let the orchestrator scale the pool between min_workers and "
                "max_workers by its backlog (default: false)"
            ),
        ] = None,
        concurrency: Annotated[int | None, Field(description="Tasks per worker")] = None,
        functions: Annotated[
            dict[str, str] | None,
            Field(description="python pools: extra functions {name: 'module:function'}"),
        ] = None,
        default_function: Annotated[
            str | None, Field(description="python pools: the function a prompt task calls")
        ] = None,
        allowed_commands: Annotated[
            list[str] | None, Field(description="shell pools: the programs tasks may run")
        ] = None,
        command_template: Annotated[
            list[str] | None, Field(description="terminal pools: the CLI argv template")
        ] = None,
        max_queue: Annotated[int | None, Field(description="Backlog bound of the pool")] = None,
        inbox_max: Annotated[
            int | None,
            Field(
                description="Most results other tasks may share into the pool's inbox "
                "(share_with); more are refused, not dropped (default: 1000)"
            ),
        ] = None,
        options: Annotated[
            dict[str, Any] | None,
            Field(
                description="Type-specific options. arq pools: function (required: the arq "
                "function a prompt task calls), redis_url (required: the arq Redis, no "
                "password in it), password_env, queue (default arq:queue), functions (more "
                "names call tasks may name), on_job_timeout (retry or fail), poll_interval"
            ),
        ] = None,
        remote: Annotated[
            RemoteSpec | None,
            Field(
                description="delegated pools: the remote MCP server (url, kind: session-buddy, "
                "mahavishnu or tool; token_env / token_file name where its token is, never the "
                "token; tool, arguments, output, error for kind tool; pool for kind mahavishnu)"
            ),
        ] = None,
        wait: WaitFlag = True,
        timeout: WaitLimit = None,
    ) -> SpawnResult:
        """Create a pool. With wait (the default) returns once it runs, or fails with the reason
        (e.g. its workers cannot start, or no orchestrator is running)."""
        state = state_of(ctx)
        settings = state.settings
        with tool_errors(settings):
            code = {
                "functions": functions,
                "allowed_commands": allowed_commands,
                "command_template": command_template,
            }
            named = [k for k, v in code.items() if v]
            secret = remote is not None and (remote.token_env or remote.token_file)
            if secret and not settings.mcp_allow_pool_code:
                raise InvalidRequest(
                    "remote.token_env / remote.token_file: the orchestrator would send that "
                    "variable's or file's content to the remote URL, which this deployment "
                    "does not accept over MCP (mcp_allow_pool_code is off); spawn such pools "
                    "with the CLI or the Python API"
                )
            if named and not settings.mcp_allow_pool_code:
                raise InvalidRequest(
                    f"{', '.join(named)}: these name code that workers run, which this "
                    "deployment does not accept over MCP (mcp_allow_pool_code is off); "
                    "spawn such pools with the CLI or the Python API"
                )
            fields: dict[str, Any] = {
                "name": name,
                "min_workers": min_workers,
                "max_workers": max_workers,
                "worker_type": worker_type,
                "labels": parse_labels(labels) if labels is not None else None,
                "auto_scale": auto_scale,
                "concurrency": concurrency,
                "functions": functions,
                "default_function": default_function,
                "allowed_commands": allowed_commands,
                "command_template": command_template,
                "max_queue": max_queue,
                "inbox_max": inbox_max,
                "options": options,
                "remote": remote.model_dump() if remote is not None else None,
            }
            spec = state.pools.pool_spec(pool_type, None, **fields)
            await state.pools.spawn_pool(None, spec, wait=wait, timeout=timeout)
            try:
                info = await state.pools.get_pool(spec.id)
                status, detail = str(info.status), info.detail
            except PoolNotFound:
                status = "requested"
                detail = "spawn requested; pool_list shows it once an orchestrator creates it"
            return SpawnResult(
                pool_id=spec.id,
                name=spec.name,
                pool_type=str(spec.pool_type),
                worker_type=str(spec.worker_type),
                status=status,
                min_workers=spec.min_workers,
                max_workers=spec.max_workers,
                message=detail,
            )

    @mcp.tool(annotations=READ_ONLY)
    async def pool_list(ctx: ToolContext) -> PoolListResult:
        """List the live pools with their type, status, worker bounds and labels."""
        state = state_of(ctx)
        with tool_errors(state.settings):
            infos = sorted(await state.pools.list_pools(), key=lambda p: p.created_at)
            return PoolListResult(count=len(infos), pools=[PoolSummary.from_info(i) for i in infos])

    @mcp.tool(annotations=READ_ONLY)
    async def pool_monitor(
        ctx: ToolContext,
        pool_ids: Annotated[
            list[str] | None, Field(description="Pools to show (default: every live pool)")
        ] = None,
    ) -> MonitorResult:
        """Per-pool metrics (workers, in_flight, queued, completed, failed, avg_ms latency,
        load) plus totals."""
        state = state_of(ctx)
        with tool_errors(state.settings):
            infos: list[PoolInfo]
            if pool_ids:
                infos = [await state.pools.get_pool(p) for p in dict.fromkeys(pool_ids)]
            else:
                infos = sorted(await state.pools.list_pools(), key=lambda p: p.created_at)
            metrics = [PoolMetrics.from_info(i) for i in infos]
            overview, memory = await memory_report(
                state.pools.redis, state.settings, [m.pool_id for m in metrics]
            )
            return MonitorResult(
                pools=metrics,
                totals=_totals(metrics),
                memory_sync={k: MemorySyncModel(**vars(v)) for k, v in overview.items()},
                memory=[PoolMemoryModel.model_validate(p.as_dict()) for p in memory],
            )

    @mcp.tool()
    async def pool_scale(
        ctx: ToolContext,
        pool_id: PoolId,
        target_workers: Annotated[int, Field(description="Workers wanted, within min..max")],
        wait: WaitFlag = False,
    ) -> ScaleResult:
        """Set a pool's target number of workers (within its min_workers..max_workers)."""
        state = state_of(ctx)
        with tool_errors(state.settings):
            info = await state.pools.get_pool(pool_id)
            if info.status not in ACCEPTING_STATUSES:
                raise PoolUnavailable(f"pool {pool_id!r} is {info.status} and cannot be scaled")
            message = f"scaling from {info.target_workers} to {target_workers} workers"
            try:
                await state.pools.scale(pool_id, target_workers, wait=wait)
            except PoolUnavailable as exc:
                message = str(exc)
            now = await state.pools.get_pool(pool_id)
            if now.status is PoolStatus.FAILED:
                raise PoolUnavailable(f"pool {pool_id!r} failed: {now.detail}")
            return ScaleResult(
                pool_id=pool_id,
                target_workers=target_workers,
                previous_target=info.target_workers,
                status=str(now.status),
                message=message,
            )

    @mcp.tool(annotations=DESTRUCTIVE)
    async def pool_close(
        ctx: ToolContext, pool_id: PoolId, wait: WaitFlag = True, timeout: CloseWait = None
    ) -> CloseResult:
        """Close a pool: its workers drain and stop; tasks still queued for it are re-routed
        (routed tasks) or failed (tasks sent to it directly)."""
        state = state_of(ctx)
        with tool_errors(state.settings):
            limit = close_wait(state.settings, timeout)
            return await close_one(state.pools, pool_id, wait, limit)

    @mcp.tool(annotations=DESTRUCTIVE)
    async def pool_close_all(
        ctx: ToolContext, wait: WaitFlag = True, timeout: CloseWait = None
    ) -> CloseAllResult:
        """Close every live pool (see pool_close)."""
        state = state_of(ctx)
        with tool_errors(state.settings):
            ids = [p.spec.id for p in await state.pools.list_pools()]
            limit = close_wait(state.settings, timeout)
            closes = (close_or_report(state.pools, i, wait, limit) for i in ids)
            closed = list(await asyncio.gather(*closes))
            return CloseAllResult(count=len(closed), pools=closed)

    @mcp.tool(annotations=READ_ONLY)
    async def pool_health(ctx: ToolContext) -> HealthResult:
        """Health from live state: the broker, the orchestrators' heartbeats, and per pool
        whether it runs with at least one worker whose heartbeat is live."""
        state = state_of(ctx)
        with tool_errors(state.settings):
            return HealthResult.model_validate(await state.pools.health_check())

    @mcp.tool(annotations=READ_ONLY)
    async def pool_search_memory(
        ctx: ToolContext,
        query: Annotated[str, Field(max_length=10_000, description="Words to look for")],
        limit: Annotated[int, Field(description="Most hits to return (1-1000)")] = 100,
        pool_ids: Annotated[
            list[str] | None,
            Field(
                description="Pools to search (default: every live pool; closed pools keep "
                "their memory and can be named here)"
            ),
        ] = None,
        source: Annotated[
            Literal["local", "session-buddy", "akosha", "all"] | None,
            Field(
                description="Where to search: local records, a memory service, or all (default:"
                " all when memory sync is enabled, else local)"
            ),
        ] = None,
    ) -> MemorySearchResult:
        """Search finished tasks across pools and the memory services (Session-Buddy,
        Akosha), best match first: each source ranks its hits (local: BM25), the lists are
        fused by reciprocal rank (a task several sources found comes first), one hit per task
        labelled with its sources. A service that is down is left out with a warning."""
        state = state_of(ctx)
        settings = state.settings
        with tool_errors(settings):
            chosen = source or ("all" if settings.memory_aggregation_enabled else "local")
            found = await search_all(
                state.pools.redis, settings, query, limit=limit, pool_ids=pool_ids, source=chosen
            )
            hits = [_hit_model(h) for h in found.hits]
            return MemorySearchResult(
                query=query,
                count=len(hits),
                hits=hits,
                pool_ids=found.pool_ids,
                scanned=found.scanned,
                sources=found.sources,
                warnings=found.warnings,
            )

    @mcp.tool()
    async def pool_dead_letters(
        ctx: ToolContext,
        action: Annotated[
            Literal["list", "requeue"],
            Field(description="'list' the dead letters, or 'requeue' the one named by entry_id"),
        ] = "list",
        entry_id: Annotated[
            str | None, Field(description="requeue: the dead letter's entry_id (from 'list')")
        ] = None,
        pool_id: Annotated[
            str | None,
            Field(
                description="list: only this pool's dead letters; requeue: send the task "
                "to this pool instead of where it was sent before"
            ),
        ] = None,
        limit: Annotated[int, Field(description="list: most entries to return (1-1000)")] = 50,
    ) -> DeadLettersResult:
        """List dead letters (tasks that ran out of attempts, entries that could not be
        decoded), newest first, or requeue one as a new task."""
        state = state_of(ctx)
        pools = state.pools
        with tool_errors(state.settings):
            if action == "requeue":
                if not entry_id:
                    raise InvalidRequest("entry_id: requeue needs the dead letter's entry_id")
                letter, task_id = await pools.requeue_dead_letter(entry_id, pool_id=pool_id)
                total = int(await pools.redis.xlen(pools.keys.dlq))
                target = pool_id or (letter.message.task.pool_id if letter.message else None)
                where = f"pool {target}" if target else "the orchestrators (routed)"
                return DeadLettersResult(
                    action=action,
                    total=total,
                    entries=[_letter_model(letter)],
                    requeued_task_id=task_id,
                    requeued_entry_id=entry_id,
                    message=f"task {letter.task_id} re-submitted as {task_id} to {where}; "
                    "the dead letter was removed",
                )
            if entry_id is not None:
                raise InvalidRequest("entry_id: only used with action='requeue'")
            if not 1 <= limit <= 1000:
                raise InvalidRequest(f"limit={limit}: must be between 1 and 1000")
            total, letters = await pools.dead_letters(limit=limit, pool_id=pool_id)
            return DeadLettersResult(
                action=action,
                total=total,
                entries=[_letter_model(x) for x in letters],
                message=f"{len(letters)} of {total} dead letter(s)",
            )
