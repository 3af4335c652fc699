"""The executor of a delegated pool's bridge: each task is forwarded to the pool's remote MCP
server instead of being run here (README.md, "Delegated pools").

A bridge is an ordinary worker process (`python -m worker`) of a `delegated` pool:
`worker.executors.build_executor` gives it a `RemoteExecutor`, so it reads the pool's stream,
marks tasks running, retries, dead-letters and acknowledges exactly like any worker. The
executor holds one MCP session for the bridge (`RemoteSession`: re-opened after a failure, a
call waits for it), and runs a task by the remote's kind:

- `session-buddy`: `execute_on_pool(pool_id, prompt, context, timeout)`; `{"success": false,
  "error": E}` is a task failure with E; a remote pool the remote lost (a restart) is created
  again and the task sent again.
- `mahavishnu` (federation): `pool_execute` (to the configured remote pool) or
  `pool_route_execute`, with an idempotency key, waiting a while; then `task_result` until
  done. The key is `<task id>:<run>`, where run counts this bridge's runs of the task: a call
  repeated after a lost reply, or the run of a task that a dead bridge had started, gets the
  remote's first task instead of a second run; a retry after a failure is a new run.
- `tool`: the configured tool with the argument template filled in; the output (and an error,
  if configured) is read at a dotted path of the reply.

A task's timeout, a cancel and a drain cancel the run: the in-flight MCP call is cancelled (the
SDK sends the cancellation), and a federated task is also cancelled on the remote.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from orchestrator.pools.delegated_remote import (
    RemoteSession,
    at_path,
    ensure_remote_pool,
    json_reply,
    remote_of,
    remote_pool_id,
    shape,
    where,
)
from shared.errors import RemoteReplyError, RemoteToolError
from shared.models import PoolSpec, TaskKind, TaskSpec
from shared.remote_config import RemoteKind, fill_arguments
from worker.executors import Outcome

log = logging.getLogger("mahavishnu.delegated")

CALL_MARGIN = 5.0  # seconds a task's call may take beyond the task's timeout (the worker's
# deadline cancels the run at the timeout anyway)
RESULT_POLL = 20.0  # seconds one task_result call waits on a federated remote
CANCEL_WAIT = 5.0  # seconds a federated run waits for the remote's task_cancel when cancelled
MAX_RESUBMITS = 3  # a federated task found cancelled on the remote (not by this run) is resent
_RUNS_KEPT = 100_000  # run counts remembered per bridge (oldest forgotten first)


class RemoteExecutor:
    """Runs a delegated pool's tasks on its remote (see the module docstring)."""

    def __init__(self, spec: PoolSpec) -> None:
        self.spec = spec
        self.remote = remote_of(spec)
        self.session = RemoteSession(spec)
        self._runs: dict[str, int] = {}
        self._cancels: set[asyncio.Task[None]] = set()
        logging.getLogger("httpx2").setLevel(logging.WARNING)  # not a line per MCP request

    async def run(self, task: TaskSpec) -> Outcome:
        """Run one task on the remote; task failures come back in the Outcome."""
        try:
            if self.remote.kind is RemoteKind.MAHAVISHNU:
                return await self._federated(task)
            if task.prompt is None:
                what = f"{where(self.spec)} of kind {self.remote.kind} runs prompt tasks only"
                return Outcome(None, f"{what}, not {task.kind} tasks", retryable=False)
            if self.remote.kind is RemoteKind.SESSION_BUDDY:
                return await self._session_buddy(task, task.prompt)
            return await self._tool(task, task.prompt)
        except RemoteReplyError as exc:
            return Outcome(None, str(exc), retryable=False)
        except RemoteToolError as exc:
            return Outcome(None, f"{where(self.spec)}: {exc}")

    async def aclose(self) -> None:
        """Let remote cancels under way end (bounded), then close the session."""
        if self._cancels:
            await asyncio.wait(list(self._cancels), timeout=CANCEL_WAIT)
        await self.session.aclose()

    def _unexpected(self, tool: str, reply: Any, problem: str = "") -> RemoteReplyError:
        detail = f" ({problem})" if problem else ""
        return RemoteReplyError(
            f"{where(self.spec)}: {tool} answered in an unexpected shape{detail}: {shape(reply)}",
            self.remote.url,
        )

    # ----------------------------------------------------------------- session-buddy

    async def _session_buddy(self, task: TaskSpec, prompt: str) -> Outcome:
        args = {
            "pool_id": remote_pool_id(self.spec),
            "prompt": prompt,
            "context": {"task_id": task.id, "pool_id": self.spec.id},
            "timeout": task.timeout,
        }
        for _ in range(2):  # a second time after re-creating a pool the remote lost
            # the remote answers by the task's timeout (an empty error): wait a little longer
            reply = json_reply(
                await self.session.call("execute_on_pool", args, task.timeout + CALL_MARGIN)
            )
            if not isinstance(reply, Mapping) or not isinstance(reply.get("success"), bool):
                raise self._unexpected("execute_on_pool", reply, "no 'success' field")
            result = reply.get("result")
            if reply["success"]:
                if not isinstance(result, Mapping) or "response" not in result:
                    raise self._unexpected("execute_on_pool", reply, "no result.response")
                if result.get("error"):  # e.g. the llm backend without its gateway
                    what = f"{where(self.spec)}: the remote's backend failed: {result['error']}"
                    return Outcome(None, what)
                return Outcome(result["response"])
            # an empty error is Session-Buddy's answer when the call's timeout ran out
            error = str(reply.get("error") or f"no answer within the {task.timeout:g} s timeout")
            if "not found" not in error.lower():
                break
            log.warning("%s: %s; creating it again", where(self.spec), error)
            await ensure_remote_pool(self.session, self.spec)
        return Outcome(None, f"{where(self.spec)}: execute_on_pool failed: {error}")

    # ------------------------------------------------------------------------- tool

    async def _tool(self, task: TaskSpec, prompt: str) -> Outcome:
        tool = self.remote.tool or ""
        arguments = fill_arguments(self.remote.arguments, prompt, task.id, task.timeout)
        reply = json_reply(await self.session.call(tool, arguments, task.timeout + CALL_MARGIN))
        if self.remote.error:
            with contextlib.suppress(KeyError):
                error = at_path(reply, self.remote.error)
                if error not in (None, "", False):
                    return Outcome(None, f"{where(self.spec)}: {tool} reported: {shape(error)}")
        try:
            return Outcome(at_path(reply, self.remote.output))
        except KeyError as missing:
            raise self._unexpected(
                tool, reply, f"no {missing.args[0]!r} on the output path {self.remote.output!r}"
            ) from None

    # ------------------------------------------------------------------- federation

    def _next_run(self, task_id: str) -> int:
        run = self._runs.pop(task_id, 0) + 1
        self._runs[task_id] = run  # re-inserted: the newest at the end
        if len(self._runs) > _RUNS_KEPT:
            del self._runs[next(iter(self._runs))]
        return run

    def _args(self, task: TaskSpec, key: str) -> dict[str, Any]:
        args: dict[str, Any] = {
            "timeout": task.timeout,
            "wait": self._wait,
            "max_attempts": 1,  # each of our attempts is one run there; we retry
            "idempotency_key": key,
            "tags": [*task.tags[:30], f"from-pool:{self.spec.id}"],
        }
        if task.kind is TaskKind.PROMPT:
            args["prompt"] = task.prompt
        elif task.kind is TaskKind.COMMAND:
            args["command"] = task.command
        else:
            args.update(call=task.call, args=task.args, kwargs=task.kwargs)
        if self.remote.pool:
            args["pool_id"] = self.remote.pool
        return args

    async def _federated(self, task: TaskSpec) -> Outcome:
        """`pool_execute` (or `pool_route_execute`) with the run's idempotency key: one call
        runs the task and waits for it; a task not done within the wait is polled with
        `task_result`. A repeated call (a lost reply) names the same remote task."""
        tool = "pool_execute" if self.remote.pool else "pool_route_execute"
        remote_id: str | None = None
        args: dict[str, Any] = {}
        try:
            for _ in range(MAX_RESUBMITS):
                args = self._args(task, f"{task.id}:{self._next_run(task.id)}")
                result = self._checked(tool, await self.session.call(tool, args))
                remote_id = str(result["task_id"])
                if result["done"] and result.get("status") == "cancelled":
                    remote_id = None  # an earlier run's task, cancelled with that run: again
                    continue
                while not result["done"]:
                    args = {"task_id": remote_id, "timeout": self._wait}
                    result = self._checked(
                        "task_result", await self.session.call("task_result", args)
                    )
                return self._outcome(remote_id, result)
            return Outcome(None, f"{where(self.spec)}: the remote keeps cancelling task {task.id}")
        except asyncio.CancelledError:
            if args:
                self._cancel_remote(remote_id, args)
            raise

    @property
    def _wait(self) -> float:
        """Seconds one call waits for a remote task (within the call's own bound)."""
        return min(RESULT_POLL, max(1.0, self.remote.call_timeout - 5))

    def _checked(self, tool: str, reply: Any) -> Mapping[str, Any]:
        result = json_reply(reply)
        if not isinstance(result, Mapping) or not isinstance(result.get("done"), bool):
            raise self._unexpected(tool, result, "no 'done' field")
        if not result.get("task_id"):
            raise self._unexpected(tool, result, "no task_id")
        return result

    def _outcome(self, remote_id: str, result: Mapping[str, Any]) -> Outcome:
        status = str(result.get("status"))
        code = result.get("exit_code")
        exit_code = code if isinstance(code, int) else None
        if status == "completed":
            return Outcome(result.get("output"), None, exit_code)
        error = result.get("error") or result.get("message") or "no reason given"
        what = f"{where(self.spec)}: remote task {remote_id} {status}: {error}"
        return Outcome(result.get("output"), what, exit_code, retryable=status != "cancelled")

    def _cancel_remote(self, remote_id: str | None, args: dict[str, Any]) -> None:
        """Cancel the remote task in the background: our run is being cancelled (and the
        worker's deadline loop cancels it again until it ends), so it cannot wait for this."""
        task = asyncio.create_task(self._cancel_call(remote_id, args), name="cancel-remote")
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _cancel_call(self, remote_id: str | None, args: dict[str, Any]) -> None:
        try:
            async with asyncio.timeout(CANCEL_WAIT):
                if remote_id is None:  # cancelled while the first call ran: find it by its key
                    found = {k: v for k, v in args.items() if k != "wait"}
                    submitted = json_reply(await self.session.call("task_submit", found))
                    remote_id = str(submitted["task_id"])
                await self.session.call("task_cancel", {"task_id": remote_id})
            log.info("%s: cancelled remote task %s", where(self.spec), remote_id)
        except Exception as exc:
            log.warning("%s: could not cancel remote task %s: %s", where(self.spec), remote_id, exc)
