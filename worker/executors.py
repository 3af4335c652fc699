"""How a worker runs a task with its pool's executor (README.md, "Tasks"), chosen by `worker_type`:
PythonExecutor (`python`), ShellExecutor (`shell`), TerminalExecutor (`terminal-claude`,
`terminal-qwen`). `build_executor` raises ExecutorError at pool spawn / worker start when the
executor cannot work; `run` reports a task's own failure as `Outcome(error=...)`, never raises.

Subprocesses never go through a shell and each leads its own session and process group. When
`run` is cancelled (the worker's timeout or shutdown) the group gets SIGTERM, then SIGKILL after
a grace period, the process is reaped and CancelledError propagates. After a normal exit,
stragglers left in the group are killed too; only a process that calls setsid can escape.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import errno
import inspect
import json
import logging
import os
import shutil
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from shared.codec import pack, unpack
from shared.config import Settings
from shared.errors import ExecutorError
from shared.models import PoolSpec, PoolType, TaskSpec, WorkerType
from worker.builtins import INLINE, function_table
from worker.progress import OutputSink, output_sink

log = logging.getLogger(__name__)

MAX_CAPTURE_BYTES = 1024 * 1024  # kept of a subprocess's stdout (head) and stderr (tail)
MAX_LINE_BYTES = 8 * 1024 * 1024  # one stream-json line; longer lines are skipped
MAX_OUTPUT_BYTES = 4 * 1024 * 1024  # a python function's packed return value
ERROR_TAIL_CHARS = 2000  # of stderr (or of an error result) quoted in an error
KILL_GRACE_SECONDS = 2.0
_ABANDON_SECONDS = 5.0  # after SIGKILL: stop waiting for pipes held open by an escaped process
_CHUNK = 64 * 1024
_STREAM_JSON = ("--output-format", "stream-json")

DEFAULT_TEMPLATES: dict[WorkerType, tuple[str, ...]] = {
    WorkerType.TERMINAL_CLAUDE: ("claude", "-p", "{prompt}", *_STREAM_JSON, "--verbose"),
    WorkerType.TERMINAL_QWEN: ("qwen", "-p", "{prompt}", *_STREAM_JSON),
}
"""The command template of each terminal-* worker type when the pool sets none."""

_T = TypeVar("_T")
_Sink = Callable[[bytes], None]


@dataclass
class Outcome:
    """What one run of a task produced; `error` is set when the task failed."""

    output: Any
    error: str | None = None
    exit_code: int | None = None
    retryable: bool = True  # False: the same task can never succeed here (fail it at once)


TASK_ATTEMPT: ContextVar[int] = ContextVar("task_attempt", default=1)
"""The attempt of the task being run, set by the worker for its run (the arq executor names
each job by task id and attempt)."""

HAND_BACK = "hand back"
"""The message of the cancel a draining worker sends a run whose entry it hands back (same
attempt): an executor whose work goes on elsewhere (an arq job) leaves it running."""


async def open_executor(executor: Executor) -> None:
    """Start what an executor needs before its first task, if anything (the arq bridge's
    child process); raise ExecutorError if it cannot."""
    opener = getattr(executor, "open", None)
    if opener is not None:
        await opener()


class Executor(Protocol):
    """Runs tasks for one worker. `run` reports task failures in the Outcome, never raises."""

    async def run(self, task: TaskSpec) -> Outcome:
        """Run one task; on cancellation kill what it started, then re-raise."""

    async def aclose(self) -> None:
        """Release resources and kill any subprocess still running."""


def build_executor(spec: PoolSpec, settings: Settings | None = None) -> Executor:
    """The executor for `spec.worker_type`; raise ExecutorError if it cannot work on this host.

    An arq pool's worker is a bridge to arq (`ArqExecutor`, which finds arq's venv by
    `settings`); a `delegated` pool's worker is a bridge forwarding tasks to the pool's remote."""
    if spec.pool_type is PoolType.ARQ:
        from worker.arq_executor import ArqExecutor  # it imports this module

        return ArqExecutor(spec, settings)
    if spec.remote is not None:  # only delegated pools have one (PoolSpec checks)
        from orchestrator.pools.delegated_executor import RemoteExecutor

        return RemoteExecutor(spec)
    if spec.worker_type is WorkerType.PYTHON:
        return PythonExecutor(spec)
    if spec.worker_type is WorkerType.SHELL:
        return ShellExecutor(spec)
    return TerminalExecutor(spec)


def _wrong_kind(spec: PoolSpec, task: TaskSpec, accepts: str) -> Outcome:
    what = f"a {spec.worker_type} pool runs {accepts} tasks, not {task.kind} tasks"
    return Outcome(None, what, retryable=False)


class PythonExecutor:
    """Calls functions that trusted pool config registers; a task only names one.

    The table is `worker.builtins.function_table`: the built-ins plus `spec.functions`. A `call`
    task calls `task.call(*args, **kwargs)`; a `prompt` task calls
    `spec.default_function(prompt)`. Async functions are awaited; sync ones run in a thread (a
    timeout abandons such a thread, it cannot stop it), except the trivial built-ins, which run
    inline. The result must be msgpack-able.
    """

    def __init__(self, spec: PoolSpec) -> None:
        self._spec, self._functions = spec, function_table(spec.functions)
        if spec.default_function not in self._functions:
            raise ExecutorError(
                f"default_function {spec.default_function!r} of pool {spec.name!r} is not "
                f"registered; this pool has: {', '.join(self.names)}"
            )

    @property
    def names(self) -> list[str]:
        """The function names a task may call, sorted."""
        return sorted(self._functions)

    async def run(self, task: TaskSpec) -> Outcome:
        """Call the named (or default) function and return its JSON-like result."""
        if task.call is not None:
            name, args, kwargs = task.call, list(task.args), dict(task.kwargs)
        elif task.prompt is not None:
            name, args, kwargs = self._spec.default_function, [task.prompt], {}
        else:
            return _wrong_kind(self._spec, task, "'call' and 'prompt'")
        function = self._functions.get(name)
        if function is None:
            names = ", ".join(self.names)
            return Outcome(
                None, f"unknown function {name!r}; this pool has: {names}", retryable=False
            )
        try:
            if inspect.iscoroutinefunction(function):
                result = await function(*args, **kwargs)
            elif function in INLINE:  # a thread hand-off would cost more than the call
                result = function(*args, **kwargs)
            else:
                result = await asyncio.to_thread(function, *args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
        except Exception as exc:
            return Outcome(None, f"{type(exc).__name__}: {exc}".removesuffix(": "))
        return _checked_result(name, result)

    async def aclose(self) -> None:
        """Nothing to release."""


def _checked_result(name: str, result: Any) -> Outcome:
    what = f"function {name!r} returned a {type(result).__name__}"
    try:
        packed = pack(result)
        value = unpack(packed)  # what the client will see; unpack rejects non-str dict keys
    except Exception as exc:  # msgpack raises TypeError, ValueError, OverflowError...
        return Outcome(None, f"{what} that is not msgpack-serialisable (use JSON-like data): {exc}")
    if len(packed) > MAX_OUTPUT_BYTES:
        return Outcome(None, f"{what} of {len(packed)} bytes; the limit is {MAX_OUTPUT_BYTES}")
    return Outcome(value)


async def _uncancellable(awaitable: Awaitable[_T]) -> _T:
    """Await to completion even if cancelled meanwhile; then re-raise that cancellation."""
    future, cancelled = asyncio.ensure_future(awaitable), False
    while True:
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.cancelled():
                raise
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result


class _Capture:
    """At most `limit` bytes of a stream: its head, or its tail when `tail` is set."""

    def __init__(self, limit: int = MAX_CAPTURE_BYTES, *, tail: bool = False) -> None:
        self.limit, self.tail, self.total, self._buffer = limit, tail, 0, bytearray()

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        if self.tail:
            self._buffer += data
            if len(self._buffer) > 2 * self.limit:
                del self._buffer[: -self.limit]
        elif len(self._buffer) < self.limit:
            self._buffer += data[: self.limit - len(self._buffer)]

    def text(self) -> str:
        kept = self._buffer[-self.limit :] if self.tail else self._buffer
        return bytes(kept).decode("utf-8", "replace")


class _Lines:
    """Splits a byte stream into lines for `on_line`; skips lines longer than `limit`."""

    def __init__(self, on_line: _Sink, limit: int = MAX_LINE_BYTES) -> None:
        self._on_line, self._limit, self._buffer = on_line, limit, bytearray()
        self._skipping, self.skipped = False, 0

    def feed(self, data: bytes) -> None:
        self._buffer += data
        if b"\n" in data:
            *lines, rest = self._buffer.split(b"\n")
            self._buffer = bytearray(rest)
            for line in lines:
                if not self._skipping:
                    self._on_line(bytes(line))
                self._skipping = False
        if len(self._buffer) > self._limit:
            self.skipped += 0 if self._skipping else 1
            self._buffer, self._skipping = bytearray(), True

    def close(self) -> None:
        if self._buffer and not self._skipping:
            self._on_line(bytes(self._buffer))
        self._buffer = bytearray()


async def _drain(stream: asyncio.StreamReader | None, sink: _Sink) -> None:
    while stream is not None and (chunk := await stream.read(_CHUNK)):
        sink(chunk)


class _Child:
    """A subprocess leading its own process group, with both pipes drained until EOF.

    Draining never stops, so the child cannot block on a full pipe, and `Process.wait` (which
    in asyncio also waits for the pipes to close) cannot deadlock.
    """

    def __init__(self, proc: asyncio.subprocess.Process, out: _Sink, err: _Sink) -> None:
        self.proc = proc
        self.finished: asyncio.Task[int] = asyncio.create_task(self._pump(out, err))

    async def _pump(self, out: _Sink, err: _Sink) -> int:
        await asyncio.gather(_drain(self.proc.stdout, out), _drain(self.proc.stderr, err))
        return await self.proc.wait()

    def signal_group(self, signum: int) -> None:
        """Send `signum` to the child's process group, if any of it is left."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)

    async def _settle(self, seconds: float) -> bool:
        done, _ = await asyncio.wait({self.finished}, timeout=seconds)
        return bool(done)

    async def stop(self, grace: float, linger: float = 0.0) -> None:
        """Wait `linger` s for a natural exit, then SIGTERM the group, wait `grace` s, SIGKILL."""
        if not self.finished.done() and not (linger > 0 and await self._settle(linger)):
            self.signal_group(signal.SIGTERM)
            if not await self._settle(grace):
                self.signal_group(signal.SIGKILL)
                if not await self._settle(_ABANDON_SECONDS):
                    log.warning("pid %d: pipes still open after SIGKILL; abandoning", self.proc.pid)
                    self.finished.cancel()
                    await asyncio.wait({self.finished})
        self.signal_group(signal.SIGKILL)  # stragglers that closed their pipes but stayed
        if not self.finished.cancelled():
            self.finished.exception()  # mark retrieved


class _ProcessExecutor:
    """Runs subprocesses for a pool and makes sure none outlives its run or `aclose`."""

    def __init__(self, spec: PoolSpec, grace: float) -> None:
        self._spec, self._grace, self._live = spec, grace, set[_Child]()

    async def _execute(
        self, argv: Sequence[str], env: Mapping[str, str] | None, out: _Sink, err: _Sink,
        wake: asyncio.Event | None = None,
    ) -> int | None:  # fmt: skip
        """Run `argv` to its exit (or until `wake` is set, then let it linger `grace` s) and
        return its exit code; raise OSError if it cannot start."""
        spawn = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True,
            )
        )  # fmt: skip
        try:
            proc = await asyncio.shield(spawn)
        except asyncio.CancelledError:  # it may have forked already: let it finish, then kill it
            await _uncancellable(self._kill_spawned(spawn, out, err))
            raise
        child, linger = _Child(proc, out, err), 0.0
        self._live.add(child)
        try:
            if wake is None:
                await asyncio.shield(child.finished)
            else:
                child.finished.add_done_callback(lambda _: wake.set())
                await wake.wait()
                linger = self._grace
        finally:
            self._live.discard(child)
            await _uncancellable(child.stop(self._grace, linger))
        return proc.returncode

    async def _kill_spawned(
        self, spawn: asyncio.Future[asyncio.subprocess.Process], out: _Sink, err: _Sink
    ) -> None:
        with contextlib.suppress(Exception):  # a failed spawn left nothing to kill
            await _Child(await spawn, out, err).stop(self._grace)

    async def aclose(self) -> None:
        """Kill every subprocess still running."""
        children, self._live = list(self._live), set()
        await asyncio.gather(*(_uncancellable(child.stop(self._grace)) for child in children))


def _start_error(program: str, exc: OSError, argv: Sequence[str]) -> str:
    hint = ""
    if exc.errno == errno.E2BIG:
        longest = max(len(arg.encode()) for arg in argv)
        hint = f" (the longest argument is {longest} bytes; Linux allows 128 KiB per argument)"
    return f"cannot start {program!r}: {exc}{hint}"


def _exit_error(what: str, code: int | None, stderr: _Capture) -> str:
    how = f"exited with code {code}"
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            how = f"was killed by signal {signal.Signals(-code).name}"
    text = stderr.text().strip()
    if len(text) > ERROR_TAIL_CHARS:
        text = "…" + text[-ERROR_TAIL_CHARS:]
    return f"{what} {how}" + (f"; stderr: {text}" if text else "")


def _locate(program: str) -> str | None:
    """`shutil.which(program)` with directory symlinks resolved (not the file's own link)."""
    found = shutil.which(program)
    if found is None:
        return None
    directory, base = os.path.split(os.path.abspath(found))
    return os.path.join(os.path.realpath(directory), base)


class ShellExecutor(_ProcessExecutor):
    """Runs a `command` task's argv directly (never a shell) when argv[0] is allowed.

    argv[0] is allowed when it equals an entry of `spec.allowed_commands`, or when it resolves
    (`shutil.which`, with directory symlinks resolved but not the file's own symlink, so a
    multi-call binary does not allow all its applets) to the same path as an entry. That
    resolved path is what runs. Output is stdout (its first 1 MiB); a non-zero exit sets
    `error` with the tail of stderr.
    """

    def __init__(self, spec: PoolSpec, *, grace: float = KILL_GRACE_SECONDS) -> None:
        super().__init__(spec, grace)
        self._allowed: dict[str, str] = {}
        for entry in spec.allowed_commands:
            path = _locate(entry)
            if path is None:
                raise ExecutorError(f"allowed command {entry!r} is not an executable on PATH")
            self._allowed[entry] = path

    def resolve(self, program: str) -> str | None:
        """The path to execute for argv[0] `program`, or None when it is not allowed."""
        if program in self._allowed:
            return self._allowed[program]
        path = _locate(program)
        return path if path is not None and path in self._allowed.values() else None

    async def run(self, task: TaskSpec) -> Outcome:
        """Run the argv; output is its stdout, exit_code its return code."""
        if task.command is None:
            return _wrong_kind(self._spec, task, "'command'")
        program = task.command[0]
        path = self.resolve(program)
        if path is None:
            allowed = ", ".join(self._spec.allowed_commands)
            refusal = f"command {program!r} is not in this pool's allowed_commands: {allowed}"
            return Outcome(None, refusal, retryable=False)
        stdout, stderr = _Capture(), _Capture(tail=True)
        argv = [path, *task.command[1:]]
        out: _Sink = stdout.feed
        sink = output_sink()
        if sink is not None:  # stdout goes out live as well, decoded across chunk boundaries
            decoder = codecs.getincrementaldecoder("utf-8")("replace")

            def out(data: bytes) -> None:
                stdout.feed(data)
                sink(decoder.decode(data))

        try:
            code = await self._execute(argv, None, out, stderr.feed)
        except OSError as exc:
            return Outcome(None, _start_error(program, exc, argv))
        output = stdout.text()
        if stdout.total > stdout.limit:
            output += f"\n[stdout truncated: kept the first {stdout.limit} of {stdout.total} bytes]"
        error = None if code == 0 else _exit_error(f"command {program!r}", code, stderr)
        return Outcome(output, error, code)


class StreamJsonCollector:
    """Turns an AI CLI's stdout, fed one line at a time, into text.

    A line holding a JSON object with a string `type` is a stream-json event: the text blocks
    of `assistant` messages are collected, and a `result` event ends the run (its `result` is
    the final output, `is_error` marks failure; later lines are ignored). Other lines are kept
    as plain text, so a CLI that prints plain text works too.

    `on_text` receives the live output as it arrives: each assistant text block (or, when the
    CLI streams partial messages, each `stream_event` text delta instead), a `[tool: NAME]` line
    per tool call, and plain lines; `system`, `user` (tool results) and `result` events show
    nothing live.
    """

    def __init__(
        self,
        on_result: Callable[[], None] | None = None,
        limit: int = MAX_CAPTURE_BYTES,
        on_text: OutputSink | None = None,
    ) -> None:
        self.result: dict[str, Any] | None = None
        self.truncated, self._parts, self._size = 0, list[str](), 0
        self._limit, self._on_result, self._on_text = limit, on_result, on_text
        self._deltas = False  # partial messages seen: their text went out live already

    def feed_line(self, raw: bytes) -> None:
        """Take one line of stdout (without its newline)."""
        if self.result is not None:
            return
        line, event = raw.decode("utf-8", "replace").rstrip("\r"), None
        if line.lstrip().startswith("{"):
            with contextlib.suppress(ValueError, RecursionError):  # deep nesting: not an event
                event = json.loads(line)
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self._add(line)
            self._show(line + "\n")
        elif event["type"] == "assistant":
            message = event.get("message")
            content = message.get("content") if isinstance(message, dict) else None
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
            for block in blocks if isinstance(blocks, list) else []:
                if isinstance(block, dict) and isinstance(text := block.get("text"), str):
                    self._add(text)
                    if not self._deltas:
                        self._show(text + "\n")
                elif isinstance(block, dict) and block.get("type") == "tool_use":
                    self._show(f"[tool: {block.get('name')}]\n")
            self._deltas = False
        elif event["type"] == "stream_event":
            self._show_delta(event.get("event"))
        elif event["type"] == "result":
            self.result = event
            if self._on_result is not None:
                self._on_result()

    def _show(self, text: str) -> None:
        if self._on_text is not None:
            self._on_text(text)

    def _show_delta(self, inner: Any) -> None:
        """A partial message's text delta (`--include-partial-messages`)."""
        delta = inner.get("delta") if isinstance(inner, dict) else None
        if isinstance(delta, dict) and delta.get("type") == "text_delta":
            text = delta.get("text")
            if isinstance(text, str):
                self._deltas = True
                self._show(text)

    def _add(self, text: str) -> None:
        room = max(self._limit - self._size, 0)
        if len(text) > room:
            self.truncated, text = self.truncated + len(text) - room, text[:room]
        if room:
            self._parts.append(text)
            self._size += len(text) + 1

    @property
    def is_error(self) -> bool:
        """Whether the result event reported an error."""
        return self.result is not None and self.result.get("is_error") is True

    def text(self) -> str:
        """The collected assistant and plain text, one piece per line."""
        more = f"\n[output truncated: {self.truncated} more characters]" if self.truncated else ""
        return "\n".join(self._parts) + more

    def output(self) -> str:
        """The result event's `result` when there is one, else the collected text."""
        final = self.result.get("result") if self.result is not None else None
        return final if isinstance(final, str) else self.text()


class TerminalExecutor(_ProcessExecutor):
    """Runs an AI CLI (claude, qwen) non-interactively on a `prompt` task.

    The argv is `spec.command_template` (else DEFAULT_TEMPLATES) with `{prompt}` replaced inside
    each element that holds it; a prompt starting with '-' gets a leading space where it forms
    a whole argument, so it cannot pass for an option. `options["cli_env"]` adds environment
    variables. Stdout goes through StreamJsonCollector; after the result event the CLI has
    `grace` s to exit before its process group is terminated.
    """

    def __init__(self, spec: PoolSpec, *, grace: float = KILL_GRACE_SECONDS) -> None:
        super().__init__(spec, grace)
        template = list(spec.command_template or DEFAULT_TEMPLATES.get(spec.worker_type, ()))
        if not template:
            raise ExecutorError(f"pool {spec.name!r} has no command_template to run")
        binary, self._name = shutil.which(template[0]), os.path.basename(template[0])
        if binary is None:
            # PATH stays in this host's log: it describes the host to whoever reads the error
            log.warning("%r not found on PATH=%s", template[0], os.environ.get("PATH", ""))
            raise ExecutorError(
                f"{spec.worker_type} pool needs the {template[0]!r} CLI on PATH; not found on "
                "the host that runs the pool's workers: install it there or set command_template"
            )
        if not any("{prompt}" in arg for arg in template[1:]):
            raise ExecutorError(f"command_template {template!r} has no '{{prompt}}' placeholder")
        self._template = [binary, *template[1:]]
        cli_env = spec.options.get("cli_env") or {}
        if not isinstance(cli_env, Mapping) or not all(isinstance(k, str) for k in cli_env):
            raise ExecutorError(f"options.cli_env must map names to values, got {cli_env!r}")
        self._env = {**os.environ, **{k: str(v) for k, v in cli_env.items()}} if cli_env else None

    def argv(self, prompt: str) -> list[str]:
        """The argv that runs `prompt`."""
        whole = " " + prompt if prompt.startswith("-") else prompt
        rest = (
            a.replace("{prompt}", whole if a == "{prompt}" else prompt) for a in self._template[1:]
        )
        return [self._template[0], *rest]

    async def run(self, task: TaskSpec) -> Outcome:
        """Run the CLI on the prompt; output is the result text (or all the text printed)."""
        if task.prompt is None:
            return _wrong_kind(self._spec, task, "'prompt'")
        wake = asyncio.Event()
        collector = StreamJsonCollector(on_result=wake.set, on_text=output_sink())
        lines, stderr = _Lines(collector.feed_line), _Capture(tail=True)
        argv = self.argv(task.prompt)
        try:
            code = await self._execute(argv, self._env, lines.feed, stderr.feed, wake)
        except OSError as exc:
            return Outcome(None, _start_error(self._name, exc, argv))
        lines.close()
        output, result = collector.output(), collector.result
        if result is None:
            if lines.skipped:
                output += f"\n[{lines.skipped} line(s) over {MAX_LINE_BYTES} bytes skipped]"
            error = None if code == 0 else _exit_error(f"{self._name} (no result)", code, stderr)
            return Outcome(output, error, code)
        if not collector.is_error:
            return Outcome(output, None, code)
        subtype = f" ({result['subtype']})" if isinstance(result.get("subtype"), str) else ""
        text = output.strip()[-ERROR_TAIL_CHARS:] or "no message"
        return Outcome(output, f"{self._name} reported an error{subtype}: {text}", code)
