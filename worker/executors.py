"""How a worker runs one task with its pool's executor (DESIGN.md §6), chosen by `worker_type`.

    python                           PythonExecutor    a function registered by trusted pool config
    shell                            ShellExecutor     an argv from the pool's allow-list, no shell
    terminal-claude, terminal-qwen   TerminalExecutor  an AI CLI run non-interactively

`build_executor` fails fast with ExecutorError (at pool spawn / worker start) when the executor
cannot work. `run` never raises for a task's own failure: it returns `Outcome(error=...)`.

Every subprocess starts in its own session, so it leads a process group. When `run` is cancelled
(the worker's timeout or shutdown) the group gets SIGTERM, then SIGKILL after a grace period, the
process is reaped, and CancelledError propagates. After a normal exit, stragglers left in the
group are killed too. Only a process that deliberately leaves the group (setsid) can escape.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import inspect
import json
import logging
import os
import shutil
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from shared.codec import pack, unpack
from shared.errors import ExecutorError
from shared.models import PoolSpec, TaskSpec, WorkerType
from worker.builtins import BUILTINS

log = logging.getLogger(__name__)

MAX_CAPTURE_BYTES = 1024 * 1024  # kept of a subprocess's stdout (head) and stderr (tail)
MAX_LINE_BYTES = 8 * 1024 * 1024  # one stream-json line; longer lines are skipped
MAX_OUTPUT_BYTES = 4 * 1024 * 1024  # a python function's packed return value
ERROR_TAIL_CHARS = 2000  # of stderr quoted in an error
KILL_GRACE_SECONDS = 2.0
_ABANDON_SECONDS = 5.0  # after SIGKILL: stop waiting for pipes held open by an escaped process
_CHUNK = 64 * 1024

DEFAULT_TEMPLATES: dict[WorkerType, tuple[str, ...]] = {
    WorkerType.TERMINAL_CLAUDE: (
        "claude",
        "-p",
        "{prompt}",
        "--output-format",
        "stream-json",
        "--verbose",
    ),
    WorkerType.TERMINAL_QWEN: ("qwen", "-p", "{prompt}", "--output-format", "stream-json"),
}
"""The command template of each terminal-* worker type when the pool sets none."""

_T = TypeVar("_T")


@dataclass
class Outcome:
    """What one run of a task produced; `error` is set when the task failed."""

    output: Any
    error: str | None = None
    exit_code: int | None = None


class Executor(Protocol):
    """Runs tasks for one worker. `run` reports task failures in the Outcome, never raises."""

    async def run(self, task: TaskSpec) -> Outcome:
        """Run one task to completion; honour cancellation by killing what it started."""
        ...

    async def aclose(self) -> None:
        """Release resources and kill any subprocess still running."""
        ...


def build_executor(spec: PoolSpec) -> Executor:
    """The executor for `spec.worker_type`; raise ExecutorError if it cannot work on this host."""
    if spec.worker_type is WorkerType.PYTHON:
        return PythonExecutor(spec)
    if spec.worker_type is WorkerType.SHELL:
        return ShellExecutor(spec)
    return TerminalExecutor(spec)


def _wrong_kind(spec: PoolSpec, task: TaskSpec, accepts: str) -> Outcome:
    return Outcome(
        None, error=f"a {spec.worker_type} pool runs {accepts} tasks; got a {task.kind} task"
    )


# --------------------------------------------------------------------------------------- python


def _import_function(name: str, target: str) -> Callable[..., Any]:
    module_name, _, attr_path = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr_path.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # an import can raise anything
        raise ExecutorError(
            f"function {name!r} -> {target!r} cannot be imported: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(obj):
        raise ExecutorError(
            f"function {name!r} -> {target!r} is a {type(obj).__name__}, not callable"
        )
    return obj  # type: ignore[no-any-return]


class PythonExecutor:
    """Calls functions that trusted pool config registers; a task only names one.

    The table is the built-ins (`worker.builtins`) plus `spec.functions` ("module:function",
    which may shadow a built-in). A `call` task calls `task.call(*args, **kwargs)`; a `prompt`
    task calls `spec.default_function(prompt)`. Async functions are awaited; sync ones run in a
    thread (a timeout abandons such a thread rather than stopping it).
    """

    def __init__(self, spec: PoolSpec) -> None:
        self._spec = spec
        self._functions: dict[str, Callable[..., Any]] = dict(BUILTINS)
        for name, target in spec.functions.items():
            self._functions[name] = _import_function(name, target)
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
            return Outcome(None, error=f"unknown function {name!r}; this pool has: {names}")
        try:
            if inspect.iscoroutinefunction(function):
                result = await function(*args, **kwargs)
            else:
                result = await asyncio.to_thread(function, *args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
        except Exception as exc:
            text = str(exc)
            return Outcome(
                None, error=f"{type(exc).__name__}: {text}" if text else type(exc).__name__
            )
        return _checked_result(name, result)

    async def aclose(self) -> None:
        """Nothing to release."""


def _checked_result(name: str, result: Any) -> Outcome:
    try:
        packed = pack(result)
        if len(packed) > MAX_OUTPUT_BYTES:
            return Outcome(
                None,
                error=f"function {name!r} returned {len(packed)} bytes (packed); "
                f"the limit is {MAX_OUTPUT_BYTES}",
            )
        value = unpack(packed)  # what the client will see; rejects non-str map keys
    except Exception as exc:  # msgpack raises TypeError, ValueError, OverflowError...
        return Outcome(
            None,
            error=f"function {name!r} returned a {type(result).__name__} that is not "
            f"msgpack-serialisable (return None, bool, int, float, str, bytes, lists and "
            f"dicts with str keys): {exc}",
        )
    return Outcome(value)


# ---------------------------------------------------------------------------------- processes


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

    def __init__(self, on_line: Callable[[bytes], None], limit: int = MAX_LINE_BYTES) -> None:
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


async def _drain(stream: asyncio.StreamReader | None, sink: Callable[[bytes], None]) -> None:
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
        """Wait `linger` s for a natural exit, then SIGTERM the group, `grace` s, SIGKILL."""
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


_Sink = Callable[[bytes], None]


class _ProcessExecutor:
    """Runs subprocesses for a pool and makes sure none outlives its run or `aclose`."""

    def __init__(self, spec: PoolSpec, grace: float) -> None:
        self._spec, self._grace, self._live = spec, grace, set[_Child]()

    async def _execute(
        self, argv: Sequence[str], env: Mapping[str, str] | None, out: _Sink, err: _Sink,
        wake: asyncio.Event | None = None,
    ) -> int | None:  # fmt: skip
        """Run `argv` (never a shell) to its exit, or until `wake` is set and then let it linger
        `grace` s; return its exit code. Raise OSError if it cannot start."""
        spawn = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True,
            )
        )  # fmt: skip
        try:
            proc = await asyncio.shield(spawn)
        except asyncio.CancelledError:  # it may have forked already: finish, then kill it
            with contextlib.suppress(Exception):
                await _uncancellable(_Child(await _uncancellable(spawn), out, err).stop(0))
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


# ------------------------------------------------------------------------------------ shell


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
                raise ExecutorError(
                    f"allowed command {entry!r} of pool {spec.name!r} is not found on PATH "
                    "or is not executable"
                )
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
            return Outcome(
                None, error=f"command {program!r} is not in this pool's allowed_commands: {allowed}"
            )
        stdout, stderr = _Capture(), _Capture(tail=True)
        argv = [path, *task.command[1:]]
        try:
            code = await self._execute(argv, None, stdout.feed, stderr.feed)
        except OSError as exc:
            return Outcome(None, error=_start_error(program, exc, argv))
        output = stdout.text()
        if stdout.total > stdout.limit:
            output += f"\n[stdout truncated: kept the first {stdout.limit} of {stdout.total} bytes]"
        if code == 0:
            return Outcome(output, exit_code=code)
        return Outcome(
            output, error=_exit_error(f"command {program!r}", code, stderr), exit_code=code
        )


# --------------------------------------------------------------------------------- terminal


class StreamJsonCollector:
    """Turns an AI CLI's stdout, fed one line at a time, into text.

    Lines holding a JSON object with a string `type` are stream-json events: the text blocks of
    `assistant` messages are collected, and a `result` event ends the run (its `result` field is
    the final output, `is_error` marks failure); later lines are ignored. Other lines are kept
    as plain text, so a CLI that prints plain text works too.
    """

    def __init__(
        self, on_result: Callable[[], None] | None = None, limit: int = MAX_CAPTURE_BYTES
    ) -> None:
        self.result: dict[str, Any] | None = None
        self.truncated = 0
        self._parts: list[str] = []
        self._size, self._limit, self._on_result = 0, limit, on_result

    def feed_line(self, raw: bytes) -> None:
        """Take one line of stdout (without its newline)."""
        if self.result is not None:
            return
        line = raw.decode("utf-8", "replace").rstrip("\r")
        event: Any = None
        if line.lstrip().startswith("{"):
            with contextlib.suppress(ValueError):
                event = json.loads(line)
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self._add(line)
        elif event["type"] == "assistant":
            message = event.get("message")
            content = message.get("content") if isinstance(message, dict) else None
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
            for block in blocks if isinstance(blocks, list) else []:
                if isinstance(block, dict) and isinstance(text := block.get("text"), str):
                    self._add(text)
        elif event["type"] == "result":
            self.result = event
            if self._on_result is not None:
                self._on_result()

    def _add(self, text: str) -> None:
        room = self._limit - self._size
        if len(text) > room:
            self.truncated += len(text) - max(room, 0)
            text = text[: max(room, 0)]
        if text or room > 0:
            self._parts.append(text)
            self._size += len(text) + 1

    @property
    def is_error(self) -> bool:
        """Whether the result event reported an error."""
        return self.result is not None and self.result.get("is_error") is True

    def text(self) -> str:
        """The collected assistant and plain text, one piece per line."""
        text = "\n".join(self._parts)
        if self.truncated:
            text += f"\n[output truncated: {self.truncated} more characters]"
        return text

    def output(self) -> str:
        """The result event's `result` when there is one, else the collected text."""
        final = self.result.get("result") if self.result is not None else None
        return final if isinstance(final, str) else self.text()


class TerminalExecutor(_ProcessExecutor):
    """Runs an AI CLI (claude, qwen) non-interactively on a `prompt` task.

    The argv is `spec.command_template` (else DEFAULT_TEMPLATES) with `{prompt}` replaced inside
    each element that holds it; a prompt starting with '-' gets a leading space where it forms a
    whole argument, so it cannot pass as an option. `options["cli_env"]` adds environment
    variables. Stdout is read with StreamJsonCollector; after the result event the CLI has
    `grace` s to exit before its process group is terminated.
    """

    def __init__(self, spec: PoolSpec, *, grace: float = KILL_GRACE_SECONDS) -> None:
        super().__init__(spec, grace)
        template = list(spec.command_template or DEFAULT_TEMPLATES.get(spec.worker_type, ()))
        if not template:
            raise ExecutorError(f"pool {spec.name!r} has no command_template to run")
        binary = shutil.which(template[0])
        if binary is None:
            raise ExecutorError(
                f"{spec.worker_type} pool needs the {template[0]!r} CLI on PATH; not found "
                f"(PATH={os.environ.get('PATH', '')}); install it or set command_template"
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
        rest = [
            whole if a == "{prompt}" else a.replace("{prompt}", prompt) for a in self._template[1:]
        ]
        return [self._template[0], *rest]

    async def run(self, task: TaskSpec) -> Outcome:
        """Run the CLI on the prompt; output is the result text (or all the text printed)."""
        if task.prompt is None:
            return _wrong_kind(self._spec, task, "'prompt'")
        name = os.path.basename(self._template[0])
        wake = asyncio.Event()
        collector = StreamJsonCollector(on_result=wake.set)
        lines, stderr = _Lines(collector.feed_line), _Capture(tail=True)
        argv = self.argv(task.prompt)
        try:
            code = await self._execute(argv, self._env, lines.feed, stderr.feed, wake)
        except OSError as exc:
            return Outcome(None, error=_start_error(name, exc, argv))
        lines.close()
        output = collector.output()
        if lines.skipped and collector.result is None:
            output += f"\n[{lines.skipped} line(s) over {MAX_LINE_BYTES} bytes skipped]"
        if collector.result is not None:
            if not collector.is_error:
                return Outcome(output, exit_code=code)
            subtype = collector.result.get("subtype")
            detail = f" ({subtype})" if isinstance(subtype, str) else ""
            text = output.strip()[-ERROR_TAIL_CHARS:] or "no message"
            error = f"{name} reported an error{detail}: {text}"
            return Outcome(output, error=error, exit_code=code)
        if code == 0:
            return Outcome(output, exit_code=code)
        return Outcome(
            output, error=_exit_error(f"{name} (no result)", code, stderr), exit_code=code
        )
