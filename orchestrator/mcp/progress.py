"""Progress notifications for the MCP tools that wait on a task.

When the caller sent a `progressToken` (`_meta.progressToken`), `pool_execute`,
`pool_route_execute` and `task_result` follow the task (`shared/progress.py`) while they wait and
send one `notifications/progress` per step: queued, routed to pool P, running on worker W
(attempt N), each output chunk (the chunk is the message), and finally the task's status.
`progress` counts the steps; there is no `total`. Without a token nothing is followed, so a plain
call costs nothing more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any

from orchestrator.mcp.models import ExecuteResult
from orchestrator.mcp.params import ToolContext
from shared.progress import follow_task

MAX_MESSAGE_CHARS = 4000  # of one output chunk in a notification (the result has the whole)


def progress_token(ctx: ToolContext) -> str | int | None:
    """The caller's progress token for this request, if it sent one."""
    meta: Any = ctx.request_context.meta
    if isinstance(meta, Mapping):
        token = meta.get("progress_token", meta.get("progressToken"))
        if isinstance(token, str | int) and not isinstance(token, bool):
            return token
    params = ctx.request_context.params
    found = ((params or {}).get("_meta") or {}).get("progressToken")
    return found if isinstance(found, str | int) and not isinstance(found, bool) else None


async def wait_reporting(
    ctx: ToolContext, pools: Any, task_id: str, waiting: Awaitable[ExecuteResult]
) -> ExecuteResult:
    """Await `waiting` (the tool's wait for `task_id`); report the task's steps meanwhile when the
    caller asked for progress."""
    if progress_token(ctx) is None:
        return await waiting
    done = asyncio.ensure_future(waiting)
    step = 0
    async for event in follow_task(pools, task_id, done):
        step += 1
        await ctx.report_progress(step, None, event.message()[:MAX_MESSAGE_CHARS])
    result = await done
    await ctx.report_progress(step + 1, None, result.status if result.done else "still waiting")
    return result
