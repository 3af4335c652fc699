"""The Session-Buddy 0.36.0 stand-in: its pool tools and memory tools, with the real names,
parameters and reply shapes.

Pool tools (`create_pool`, `execute_on_pool`, `execute_batch_on_pool`, `route_to_pool`,
`list_pools`, `get_pool_status`, `check_pool_health`, `delete_pool`, `get_pool_manager_status`)
answer a JSON object (as text and as structured content); a failure is `{"success": false,
"error": ...}` with `is_error` false, except `create_pool` of an existing id, which raises (an
`is_error` reply "Error calling tool 'create_pool': Pool P already exists"), as the real one
does. Memory tools answer emoji text (see `session_buddy_memory`). Any other tool name answers
`is_error` "Unknown tool: 'NAME'", as the real server does for `store_memory`,
`batch_store_memories` or `search_conversations`.
"""

from __future__ import annotations

from typing import Any

from mcp.server import MCPServer

from tests.standins.server import build_server
from tests.standins.session_buddy_memory import Reflections, memory_tools
from tests.standins.session_buddy_pools import PoolManager


def _batch_item(result: dict[str, Any] | BaseException) -> dict[str, Any]:
    if isinstance(result, BaseException):
        return {"status": "failed", "output": None, "error": str(result)}
    error = result.get("error")
    return {"status": "failed" if error else "completed", "output": result, "error": error}


def pool_tools(manager: PoolManager) -> list[Any]:
    """The pool tools over `manager`."""

    async def create_pool(
        pool_id: str | None = None,
        *,
        backend: str = "placeholder",
        model: str | None = None,
        reflect_tasks: bool = False,
    ) -> dict[str, Any]:
        pool = manager.create(pool_id, backend, model, reflect_tasks)  # raises on a duplicate id
        status = pool.status()
        return {
            "success": True,
            "pool_id": pool.pool_id,
            "status": "running" if status["running"] else "stopped",
            "workers_count": status["workers_count"],
            "queue_size": status["queue_size"],
            "created_at": status["created_at"],
            "metadata": pool.metadata,
        }

    async def execute_on_pool(
        pool_id: str,
        prompt: str,
        context: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        pool = manager.pools.get(pool_id)
        if pool is None:
            return {"success": False, "error": f"Pool {pool_id} not found"}
        try:
            result = await pool.execute(prompt, context, timeout)
        except Exception as exc:
            return {"success": False, "pool_id": pool_id, "error": str(exc)}
        return {
            "success": True,
            "pool_id": pool_id,
            "worker_id": result.get("worker_id"),
            "result": result,
            "backend": pool.backend,
        }

    async def execute_batch_on_pool(
        pool_id: str,
        prompts: list[str],
        context: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        pool = manager.pools.get(pool_id)
        if pool is None:
            return {"success": False, "pool_id": pool_id, "error": f"Pool {pool_id} not found"}
        results = await pool.execute_batch(prompts, context, timeout)
        return {
            "success": True,
            "pool_id": pool_id,
            "results_count": len(results),
            "results": [_batch_item(result) for result in results],
        }

    async def route_to_pool(
        prompt: str,
        context: dict[str, Any] | None = None,
        selector: str = "least_loaded",
        timeout: float | None = None,
    ) -> dict[str, Any]:
        try:
            pool = manager.choose(selector)
            result = await pool.execute(prompt, context, timeout)
        except Exception as exc:
            return {"success": False, "error": str(exc)}
        return {"success": True, "pool_id": pool.pool_id, "strategy": selector, "result": result}

    async def list_pools() -> dict[str, Any]:
        pools = [pool.status() for pool in manager.pools.values()]
        return {"success": True, "pools_count": len(pools), "pools": pools}

    async def get_pool_status(pool_id: str) -> dict[str, Any]:
        pool = manager.pools.get(pool_id)
        if pool is None:
            return {"success": False, "pool_id": pool_id, "error": f"Pool {pool_id} not found"}
        return {"success": True, "pool_id": pool_id, "status": pool.status()}

    async def check_pool_health(pool_id: str | None = None) -> dict[str, Any]:
        if not pool_id:
            return {"success": True, "health": manager.health()}
        pool = manager.pools.get(pool_id)
        if pool is None:
            return {"success": False, "error": f"Pool {pool_id} not found"}
        return {"success": True, "pool_id": pool_id, "health": pool.health()}

    async def delete_pool(pool_id: str, timeout: float = 5.0) -> dict[str, Any]:
        deleted = await manager.delete(pool_id)
        return {"success": True, "pool_id": pool_id, "deleted": deleted}

    async def get_pool_manager_status() -> dict[str, Any]:
        return {"success": True, "manager_running": True, "health": manager.health()}

    return [
        create_pool,
        execute_on_pool,
        execute_batch_on_pool,
        route_to_pool,
        list_pools,
        get_pool_status,
        check_pool_health,
        delete_pool,
        get_pool_manager_status,
    ]


def build() -> MCPServer:
    """A Session-Buddy stand-in with no pools and no reflections."""
    reflections = Reflections()
    manager = PoolManager(reflections)

    async def reset() -> None:
        await manager.reset()
        reflections.reset()

    return build_server("session-buddy", [*pool_tools(manager), *memory_tools(reflections)], reset)
