"""The MCP facade's task tools: execute (on a pool, or routed), submit, status, result, cancel.

Every tool goes through the facade's one PoolManager. A call that waits respects its wait bound:
a task not done by then, or that waits for an orchestrator when none runs, is returned with
done=false and its task_id, never an error.
"""

from __future__ import annotations

from typing import Annotated, Any

from mcp_types import ToolAnnotations
from pydantic import Field

from orchestrator.mcp.models import ExecuteResult, TaskCancelResult, TaskSubmitted
from orchestrator.mcp.params import (
    AffinityKey,
    Call,
    CallArgs,
    CallKwargs,
    Command,
    IdempotencyKey,
    Labels,
    MaxAttempts,
    PoolId,
    PoolSelector,
    Prompt,
    QueueTimeout,
    ShareWith,
    Tags,
    TaskId,
    Timeout,
    ToolContext,
    Wait,
    state_of,
)
from orchestrator.mcp.progress import wait_reporting
from orchestrator.mcp.support import (
    ToolSet,
    parse_labels,
    parse_selector,
    task_payload,
    tool_errors,
)
from shared.client import PoolManager, make_task
from shared.config import Settings
from shared.errors import InvalidRequest, OrchestratorNotRunning, ResultTimeout
from shared.models import (
    MAX_TIMEOUT_SECONDS,
    RoutingStrategy,
    TaskSpec,
    TaskStatus,
    executor_runs,
)

READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
ResultWait = Annotated[
    float,
    Field(ge=0, le=MAX_TIMEOUT_SECONDS, description="Seconds to wait; 0 answers at once"),
]


async def wait_result(pools: PoolManager, task_id: str, wait: float) -> ExecuteResult:
    """The task's final result, or its current state if it is not done within `wait` seconds
    or cannot be done until an orchestrator runs."""
    try:
        return ExecuteResult.from_result(await pools.result(task_id, wait))
    except OrchestratorNotRunning as exc:  # the task is queued all the same
        current = await pools.status(task_id)
        if current.status.is_final:
            return ExecuteResult.from_result(current)
        message = (
            f"{exc}; poll task_result with task_id={task_id!r} once it runs, or cancel it "
            "with task_cancel"
        )
        return ExecuteResult.from_result(current, message)
    except ResultTimeout:
        current = await pools.status(task_id)
        if current.status.is_final:
            return ExecuteResult.from_result(current)
        message = (
            f"not done after {wait:g}s (still {current.status}); the task goes on: poll "
            f"task_result with task_id={task_id!r}, or cancel it with task_cancel"
        )
        if current.status is TaskStatus.PENDING:
            message += (
                "; it is not routed yet: no eligible pool has room, or no orchestrator is "
                "running (pool_health shows both)"
            )
        return ExecuteResult.from_result(current, message)


def routed_task(
    settings: Settings,
    payload: dict[str, Any],
    pool_selector: str | None,
    affinity_key: str | None,
    labels: dict[str, str] | list[str] | None,
) -> TaskSpec:
    """A task for the orchestrators to route, with its strategy, affinity key and labels."""
    strategy = parse_selector(pool_selector)
    if strategy is None and affinity_key:
        strategy = RoutingStrategy.AFFINITY
    if strategy is not None:
        payload["strategy"] = strategy
    if affinity_key is not None:
        payload["affinity_key"] = affinity_key
    parsed = parse_labels(labels)
    if parsed:
        payload["labels"] = parsed
    return make_task(payload, settings=settings)


async def check_pool_runs(pools: PoolManager, task: TaskSpec, pool_id: str) -> None:
    """InvalidRequest when the pool's executor cannot run this kind of task."""
    info = await pools.get_pool(pool_id)
    if not executor_runs(info.spec.worker_type, task.kind):
        raise InvalidRequest(
            f"pool {pool_id!r} runs {info.spec.worker_type} workers, which cannot run a "
            f"{task.kind} task (python: prompt or call; shell: command; terminal-*: prompt)"
        )


def register_task_tools(mcp: ToolSet) -> None:
    """Add the task tools to `mcp`."""

    @mcp.tool()
    async def pool_execute(
        ctx: ToolContext,
        pool_id: PoolId,
        prompt: Prompt = None,
        timeout: Timeout = None,
        command: Command = None,
        call: Call = None,
        args: CallArgs = None,
        kwargs: CallKwargs = None,
        wait: Wait = None,
        max_attempts: MaxAttempts = None,
        tags: Tags = None,
        idempotency_key: IdempotencyKey = None,
        share_with: ShareWith = None,
    ) -> ExecuteResult:
        """Run a task on one pool and wait for its result (keys: pool_id, worker_id, status,
        output, error, duration, task_id, attempts, exit_code). If it is not done within
        `wait` (default: timeout) seconds, returns done=false and the task_id to poll."""
        state = state_of(ctx)
        with tool_errors(state.settings):
            task = make_task(
                task_payload(
                    prompt=prompt,
                    command=command,
                    call=call,
                    args=args,
                    kwargs=kwargs,
                    timeout=timeout,
                    max_attempts=max_attempts,
                    tags=tags,
                    idempotency_key=idempotency_key,
                    share_with=share_with,
                    pool_id=pool_id,
                ),
                settings=state.settings,
            )
            await check_pool_runs(state.pools, task, pool_id)
            task_id = await state.pools.submit(task, pool_id=pool_id)
            waiting = wait_result(state.pools, task_id, task.timeout if wait is None else wait)
            return await wait_reporting(ctx, state.pools, task_id, waiting)

    @mcp.tool()
    async def pool_route_execute(
        ctx: ToolContext,
        prompt: Prompt = None,
        pool_selector: PoolSelector = None,
        timeout: Timeout = None,
        affinity_key: AffinityKey = None,
        labels: Labels = None,
        command: Command = None,
        call: Call = None,
        args: CallArgs = None,
        kwargs: CallKwargs = None,
        wait: Wait = None,
        queue_timeout: QueueTimeout = None,
        max_attempts: MaxAttempts = None,
        tags: Tags = None,
        idempotency_key: IdempotencyKey = None,
        share_with: ShareWith = None,
    ) -> ExecuteResult:
        """Let the orchestrators pick an eligible pool (running, with a live worker, room, the
        required labels and an executor for the task) and wait for the result, as pool_execute.
        """
        state = state_of(ctx)
        with tool_errors(state.settings):
            payload = task_payload(
                prompt=prompt,
                command=command,
                call=call,
                args=args,
                kwargs=kwargs,
                timeout=timeout,
                queue_timeout=queue_timeout,
                max_attempts=max_attempts,
                tags=tags,
                idempotency_key=idempotency_key,
                share_with=share_with,
            )
            task = routed_task(state.settings, payload, pool_selector, affinity_key, labels)
            task_id = await state.pools.submit(task)
            waiting = wait_result(state.pools, task_id, task.timeout if wait is None else wait)
            return await wait_reporting(ctx, state.pools, task_id, waiting)

    @mcp.tool()
    async def task_submit(
        ctx: ToolContext,
        prompt: Prompt = None,
        pool_id: Annotated[
            str | None,
            Field(
                min_length=1,
                max_length=64,
                description="The pool to send the task to directly; without it the "
                "orchestrators route the task (pool_selector, affinity_key, labels)",
            ),
        ] = None,
        command: Command = None,
        call: Call = None,
        args: CallArgs = None,
        kwargs: CallKwargs = None,
        pool_selector: PoolSelector = None,
        affinity_key: AffinityKey = None,
        labels: Labels = None,
        timeout: Timeout = None,
        queue_timeout: QueueTimeout = None,
        max_attempts: MaxAttempts = None,
        tags: Tags = None,
        idempotency_key: IdempotencyKey = None,
        share_with: ShareWith = None,
    ) -> TaskSubmitted:
        """Queue a task without waiting and return its task_id (poll with task_status or
        task_result). With pool_id it goes to that pool; otherwise the orchestrators route it."""
        state = state_of(ctx)
        with tool_errors(state.settings):
            payload = task_payload(
                prompt=prompt,
                command=command,
                call=call,
                args=args,
                kwargs=kwargs,
                timeout=timeout,
                queue_timeout=queue_timeout,
                max_attempts=max_attempts,
                tags=tags,
                idempotency_key=idempotency_key,
                share_with=share_with,
            )
            if pool_id is not None:
                if pool_selector or affinity_key or labels:
                    raise InvalidRequest(
                        "pool_selector/affinity_key/labels: these route a task; they do not go "
                        "with pool_id (which sends it to that pool directly)"
                    )
                task = make_task(payload, settings=state.settings, pool_id=pool_id)
                await check_pool_runs(state.pools, task, pool_id)
            else:
                task = routed_task(state.settings, payload, pool_selector, affinity_key, labels)
            task_id = await state.pools.submit(task, pool_id=pool_id, expect_reply=False)
            current = await state.pools.status(task_id)
            return TaskSubmitted(
                task_id=task_id,
                status=str(current.status),
                pool_id=pool_id,
                routed=pool_id is None,
                message=f"queued; poll task_result with task_id={task_id!r}",
            )

    @mcp.tool(annotations=READ_ONLY)
    async def task_status(ctx: ToolContext, task_id: TaskId) -> ExecuteResult:
        """A task's current state, or its final result once it has one (no waiting)."""
        state = state_of(ctx)
        with tool_errors(state.settings):
            return ExecuteResult.from_result(await state.pools.status(task_id))

    @mcp.tool(annotations=READ_ONLY)
    async def task_result(
        ctx: ToolContext, task_id: TaskId, timeout: ResultWait = 30.0
    ) -> ExecuteResult:
        """Wait up to `timeout` seconds for a task's final result; if it is not done by then,
        returns its current state with done=false (call again to keep waiting)."""
        state = state_of(ctx)
        with tool_errors(state.settings):
            waiting = wait_result(state.pools, task_id, timeout)
            return await wait_reporting(ctx, state.pools, task_id, waiting)

    @mcp.tool()
    async def task_cancel(ctx: ToolContext, task_id: TaskId) -> TaskCancelResult:
        """Cancel a task: a queued one never starts; a running one has its executor stopped.
        A task that is already done is left as it is."""
        state = state_of(ctx)
        with tool_errors(state.settings):
            before = await state.pools.cancel(task_id)
            now = (await state.pools.status(task_id)).status
            if before.is_final:
                message = f"already {before}; nothing changed"
            elif before is TaskStatus.RUNNING:
                message = "cancel requested; the worker stops the task and records it cancelled"
            else:
                message = "cancelled before it started"
            return TaskCancelResult(
                task_id=task_id,
                previous_status=str(before),
                status=str(now),
                cancelled=not before.is_final,
                message=message,
            )
