"""One delegated pool's remote MCP server: a session kept open and re-opened, reply reading,
and the checks the backend runs at spawn and as health probes.

`RemoteSession` holds one `RemoteMCP` session (orchestrator/mcp/client.py) for a bridge. The
SDK's client must be entered and left in one task, so a keeper task owns it; calls come from
the tasks the bridge runs. A call that fails because the remote cannot be reached marks the
session broken: the keeper re-opens it with backoff, and the call waits for it (the task's own
timeout bounds the wait), so an outage delays tasks instead of failing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any, Protocol

import httpx

from orchestrator.mcp.client import RemoteMCP
from shared.config import redact_url
from shared.errors import RemoteReplyError, RemoteToolError, RemoteUnavailable
from shared.models import PoolSpec
from shared.remote_config import RemoteKind, RemoteSpec

log = logging.getLogger("mahavishnu.delegated")

REOPEN_BACKOFF_BASE, REOPEN_BACKOFF_MAX = 0.2, 5.0
CLOSE_WAIT = 5.0  # seconds closing a broken session may take


class ToolCaller(Protocol):
    """What calls a remote's tools: a RemoteMCP session, or a bridge's RemoteSession."""

    async def call(self, tool: str, arguments: Mapping[str, Any]) -> Any:
        """Call `tool` and return its reply."""


def remote_of(spec: PoolSpec) -> RemoteSpec:
    """The pool's remote (a delegated pool always has one: PoolSpec checks it)."""
    if spec.remote is None:
        raise ValueError(f"pool {spec.id} has no remote")
    return spec.remote


def remote_pool_id(spec: PoolSpec) -> str:
    """The id of the pool a session-buddy remote keeps for this pool (stable, so a pool the
    remote lost with a restart is re-created under the same id)."""
    return f"mahavishnu-{spec.id}"


def where(spec: PoolSpec) -> str:
    """'pool P (remote URL)': how errors name a delegated pool and its remote."""
    return f"pool {spec.id} (remote {redact_url(remote_of(spec).url)})"


def json_reply(value: Any) -> Any:
    """A tool's reply as JSON data: text that holds JSON is parsed, and a structured result
    that only wraps such text (`{"result": "<json>"}`) is unwrapped."""
    if isinstance(value, Mapping) and set(value) == {"result"} and isinstance(value["result"], str):
        value = value["result"]
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


def at_path(reply: Any, path: str) -> Any:
    """The value at a dotted path of a JSON reply; KeyError naming the missing step."""
    value = reply
    for step in path.split(".") if path else []:
        if isinstance(value, Mapping) and step in value:
            value = value[step]
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            raise KeyError(step)
    return value


def shape(value: Any, limit: int = 200) -> str:
    """A short rendering of a reply for an error message."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RemoteSession:
    """One MCP session with a pool's remote, re-opened after failures (see the module doc)."""

    def __init__(self, spec: PoolSpec) -> None:
        self.spec = spec
        self.remote = remote_of(spec)
        self._client: RemoteMCP | None = None
        self._ready = asyncio.Event()
        self._broken = asyncio.Event()
        self._closed = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        self.last_error = ""

    def _start(self) -> None:
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep(), name=f"remote-{self.spec.id}")

    async def _keep(self) -> None:
        backoff = REOPEN_BACKOFF_BASE
        while not self._closed.is_set():
            try:
                await self._hold_session()
                backoff = REOPEN_BACKOFF_BASE  # it was open: the next try is at once
            except asyncio.CancelledError:
                if self._closed.is_set():
                    return
                # the SDK's task group cancels its host task when the transport fails
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                self.last_error = self.last_error or "the session ended"
            except Exception as exc:  # ValueError (token), RemoteUnavailable, ...
                reason = str(exc) or type(exc).__name__
                if reason != self.last_error:
                    log.warning("%s: cannot connect: %s", where(self.spec), reason)
                self.last_error = reason
            self._broken.clear()
            if self._closed.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), backoff)
            backoff = min(backoff * 2, REOPEN_BACKOFF_MAX)

    async def _hold_session(self) -> None:
        """Open a session, serve calls with it until it breaks or the bridge closes."""
        client = RemoteMCP(
            self.remote.url,
            token=self.remote.token(),
            timeout=self.remote.call_timeout,
            connect_timeout=self.remote.connect_timeout,
        )
        await client.__aenter__()
        try:
            self._client = client
            self._ready.set()
            if self.last_error:
                log.info("%s: connected again", where(self.spec))
            self.last_error = ""
            await _first(self._broken, self._closed)
        finally:
            self._ready.clear()
            self._client = None
            # closing a session whose server died can hang on its streams: bounded
            with contextlib.suppress(BaseException):
                async with asyncio.timeout(CLOSE_WAIT):
                    await client.__aexit__(None, None, None)

    async def call(
        self, tool: str, arguments: Mapping[str, Any], timeout: float | None = None
    ) -> Any:
        """Call a tool, waiting (however long the caller lets it) while the remote cannot be
        reached; RemoteToolError when the tool answers with an error.

        Each call is bounded by `timeout` (default `call_timeout`): a session whose server died
        can leave a call waiting for a reply that never comes (the SDK tries to resume the
        stream), so a call without an answer in time counts as a lost session."""
        bound = timeout or self.remote.call_timeout
        self._start()
        while True:
            await self._ready.wait()
            client = self._client
            if client is None:
                continue
            try:
                async with asyncio.timeout(bound):
                    return await client.call(tool, arguments)
            except TimeoutError:
                self._mark_broken(f"{tool} got no answer within {bound:g} s")
            except RemoteUnavailable as exc:
                self._mark_broken(str(exc))
            except RemoteToolError:
                raise
            except Exception as exc:  # a transport failure the SDK did not wrap
                self._mark_broken(f"{type(exc).__name__}: {exc}")

    def _mark_broken(self, reason: str) -> None:
        if self._client is not None:
            log.warning("%s: call failed, reconnecting: %s", where(self.spec), reason)
            self.last_error = reason
        self._ready.clear()
        self._broken.set()

    async def aclose(self) -> None:
        """Close the session and stop re-opening it."""
        self._closed.set()
        if self._keeper is not None:
            try:
                await asyncio.wait_for(self._keeper, 10)
            except (TimeoutError, asyncio.CancelledError):
                self._keeper.cancel()


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


# ------------------------------------------------------------------ spawn checks and probes


async def ensure_remote_pool(remote: ToolCaller, spec: PoolSpec) -> None:
    """Create the session-buddy pool of this pool (`create_pool`) unless it exists already;
    RemoteReplyError naming the pool, the remote and the problem when it cannot be made."""
    spec_remote = remote_of(spec)
    pool_id = remote_pool_id(spec)
    args: dict[str, Any] = {
        "pool_id": pool_id,
        "backend": spec_remote.backend,
        "reflect_tasks": spec_remote.reflect_tasks,
    }
    if spec_remote.model:
        args["model"] = spec_remote.model
    try:
        reply = json_reply(await remote.call("create_pool", args))
    except RemoteToolError as exc:
        if "already exists" in str(exc):  # Session-Buddy raises for an existing id
            return
        raise
    if not isinstance(reply, Mapping) or not isinstance(reply.get("success"), bool):
        raise RemoteReplyError(
            f"{where(spec)}: create_pool answered in an unexpected shape: {shape(reply)}",
            spec_remote.url,
        )
    if not reply["success"]:
        raise RemoteReplyError(
            f"{where(spec)}: create_pool failed: {reply.get('error')}", spec_remote.url
        )


async def pool_health(remote: ToolCaller, spec: PoolSpec) -> str:
    """'' when the remote has this pool's session-buddy pool (re-created when the remote lost
    it, e.g. with a restart), else what is wrong. The remote's own pool status is not used:
    Session-Buddy calls a pool whose workers idled for 5 minutes "degraded", yet it serves."""
    reply = json_reply(await remote.call("check_pool_health", {"pool_id": remote_pool_id(spec)}))
    if not isinstance(reply, Mapping) or not isinstance(reply.get("success"), bool):
        return f"check_pool_health answered in an unexpected shape: {shape(reply)}"
    if reply["success"]:
        return ""
    error = str(reply.get("error", ""))
    if "not found" not in error:
        return f"check_pool_health failed: {error}"
    log.warning("%s: the remote lost pool %s: creating it again", where(spec), remote_pool_id(spec))
    await ensure_remote_pool(remote, spec)
    return ""


async def check_remote(spec: PoolSpec, *, prepare: bool) -> str:
    """Connect (initialize), check the token and the tools (`tools/list`, which also tells the
    session answers: MCP's ping is gone from the 2026 protocol), and for session-buddy make
    sure the remote pool exists and is healthy. '' when all is well, else the problem, naming
    the pool and the remote (never the token)."""
    remote = remote_of(spec)
    try:
        token = remote.token()
    except ValueError as exc:
        return f"{where(spec)}: {exc}"
    # a probe is bounded by the connect timeout (a session whose server died mid-call can
    # wait for ever); preparing may also have to wait for create_pool
    bound = remote.connect_timeout + (remote.call_timeout if prepare else 0.0)
    try:
        async with asyncio.timeout(bound):
            async with RemoteMCP(remote.url, token=token, timeout=remote.connect_timeout) as mcp:
                names = await mcp.tool_names()
                missing = [t for t in remote.required_tools() if t not in names]
                if missing:
                    listed = ", ".join(sorted(names)[:20]) or "none"
                    return (
                        f"{where(spec)}: the remote has no tool {', '.join(map(repr, missing))} "
                        f"needed by kind {remote.kind} (it lists: {listed})"
                    )
                if remote.kind is RemoteKind.SESSION_BUDDY:
                    if prepare:
                        await ensure_remote_pool(mcp, spec)
                    problem = await pool_health(mcp, spec)
                    if problem:
                        return f"{where(spec)}: {problem}"
    except TimeoutError:
        return f"{where(spec)}: no answer within {bound:g} s"
    except (RemoteUnavailable, RemoteToolError, RemoteReplyError) as exc:
        text = str(exc)
        status = await _http_status(remote.url, token) if isinstance(exc, RemoteUnavailable) else 0
        if status in (401, 403):
            how = f"token_env {remote.token_env}" if remote.token_env else "token_file"
            if not (remote.token_env or remote.token_file):
                how = "no token given: set --remote-token-env or --remote-token-file"
            text = f"the remote refused the token with HTTP {status} ({how})"
        return text if text.startswith("pool ") else f"{where(spec)}: {text}"
    except Exception as exc:  # a transport failure the SDK did not wrap
        return f"{where(spec)}: {type(exc).__name__}: {exc}"
    return ""


async def _http_status(url: str, token: str | None) -> int:
    """The HTTP status a bare MCP request gets (the SDK reports a refused token only as "an
    error response"); 0 when there is no answer."""
    headers = {"accept": "application/json, text/event-stream"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    try:
        async with httpx.AsyncClient(timeout=5.0) as http:
            return (await http.post(url, json={}, headers=headers)).status_code
    except httpx.HTTPError:
        return 0


async def delete_remote_pool(spec: PoolSpec) -> None:
    """Delete the session-buddy pool of a closed pool (best effort: logged, never raised)."""
    remote = remote_of(spec)
    try:
        async with asyncio.timeout(remote.connect_timeout + remote.call_timeout):
            async with RemoteMCP(
                remote.url, token=remote.token(), timeout=remote.connect_timeout
            ) as mcp:
                reply = json_reply(await mcp.call("delete_pool", {"pool_id": remote_pool_id(spec)}))
        log.info("%s: delete_pool answered %s", where(spec), shape(reply))
    except Exception as exc:
        name = remote_pool_id(spec)
        log.warning("%s: could not delete remote pool %s: %s", where(spec), name, exc)
