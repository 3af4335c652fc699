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
import logging
from collections.abc import Awaitable, Mapping
from typing import Any

from redis.exceptions import RedisError

from orchestrator.mcp.models import ExecuteResult
from orchestrator.mcp.params import ToolContext
from shared.progress import follow_task

log = logging.getLogger("mahavishnu.mcp")

MAX_MESSAGE_CHARS = 4000  # of one output chunk in a notification (the result has the whole)


def wants_progress(ctx: ToolContext) -> bool:
    """Whether the caller asked for progress on this request.

    On the wire that is `params._meta.progressToken`. The SDK's in-process dispatcher (a
    `Client(server)`) carries a callback instead of a token, and the SDK has no public way to
    ask for either, so the request's dispatch context is looked at as well (mcp 2.3: a
    `progress_token`, `_progress_token` or `_on_progress` attribute that is set, on it or on
    the context it wraps)."""
    request = ctx.request_context
    meta = (request.params or {}).get("_meta")
    if isinstance(meta, Mapping) and meta.get("progressToken") is not None:
        return True
    outbound = getattr(request.session, "_request_outbound", None)
    for _ in range(4):  # the runner wraps the dispatcher's context (`_inner`)
        if any(
            getattr(outbound, name, None) is not None
            for name in ("progress_token", "_progress_token", "_on_progress")
        ):
            return True
        outbound = getattr(outbound, "_inner", None)
    return False


async def wait_reporting(
    ctx: ToolContext, pools: Any, task_id: str, waiting: Awaitable[ExecuteResult]
) -> ExecuteResult:
    """Await `waiting` (the tool's wait for `task_id`); report the task's steps meanwhile when the
    caller asked for progress. Progress is a view: if following fails (Redis trouble), the
    wait goes on without it."""
    if not wants_progress(ctx):
        return await waiting
    done = asyncio.ensure_future(waiting)
    step = 0
    try:
        try:
            async for event in follow_task(pools, task_id, done):
                step += 1
                await ctx.report_progress(step, None, event.message()[:MAX_MESSAGE_CHARS])
        except RedisError as exc:
            log.warning("following task %s for progress failed: %s", task_id, exc)
        result = await done
    finally:
        if not done.done():  # the call was cancelled (the caller went away)
            done.cancel()
    final = result.status if result.done else f"not done yet ({result.status})"
    await ctx.report_progress(step + 1, None, final)
    return result
