"""Executors: built-in and registered python functions, the shell allow-list, AI CLIs through a
fake stream-json CLI, and process-group cleanup on cancellation (no orphans)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.errors import ExecutorError
from shared.models import PoolSpec, TaskSpec, WorkerType
from worker import builtins
from worker.executors import (
    DEFAULT_TEMPLATES,
    MAX_CAPTURE_BYTES,
    Outcome,
    PythonExecutor,
    ShellExecutor,
    StreamJsonCollector,
    TerminalExecutor,
    _Lines,
    build_executor,
)

pytestmark = pytest.mark.unit  # needs no Redis: `make test-unit`


PY = sys.executable
GRACE = 0.3
Pids = tuple[str, asyncio.Queue[list[int]]]  # a unix socket path, the pid lists reported to it

# A stand-in AI CLI: `fake_cli.py MODE PROMPT`. PID_SOCKET (a unix socket) receives pids.
FAKE_CLI = r"""
import json, os, signal, socket, subprocess, sys, time

mode, prompt = sys.argv[1], sys.argv[2]

def emit(event):
    print(json.dumps(event), flush=True)

def report(*pids):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(os.environ["PID_SOCKET"])
        sock.sendall(" ".join(map(str, pids)).encode())

def hang():
    while True:
        time.sleep(1000)

if mode == "stream":
    emit({"type": "system", "subtype": "init", "session_id": "s1"})
    emit({"type": "assistant", "message": {"content": [
        {"type": "text", "text": "thinking about " + prompt},
        {"type": "tool_use", "name": "Bash", "input": {}}]}})
    emit({"type": "user", "message": {"content": [{"type": "tool_result", "content": "x"}]}})
    emit({"type": "result", "subtype": "success", "is_error": False, "result": "answer: " + prompt})
elif mode == "assistant-only":
    emit({"type": "assistant", "message": {"content": [{"type": "text", "text": "part one"}]}})
    emit({"type": "assistant", "message": {"content": "part two"}})
elif mode == "error":
    emit({"type": "result", "subtype": "error_max_turns", "is_error": True,
          "result": "ran out of turns"})
elif mode == "plain":
    sys.stdout.write("line one\n[1, 2]\nlast line without newline")
elif mode == "crash":
    sys.exit("auth failed: no API key")
elif mode == "env":
    print(os.environ.get("FAKE_VAR", "unset"))
elif mode == "argv":
    print(json.dumps({"argv": sys.argv[2:]}))
elif mode == "linger":
    report(os.getpid())
    emit({"type": "result", "is_error": False, "result": "done"})
    hang()
elif mode in ("hang", "stubborn"):
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
    report(os.getpid(), child.pid)
    hang()
"""


def reaped(pid: int) -> bool:
    """True when `pid` no longer exists, not even as a zombie (the executor reaps its children)."""
    return not os.path.exists(f"/proc/{pid}")


async def exits(pid: int, timeout: float = 2.0) -> bool:
    """Wait (on a pidfd, no polling) until `pid`, not our child, has exited; False on timeout.
    A killed process closes its pipes a moment before it is a zombie: this waits for that."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(pidfd, lambda: None if done.done() else done.set_result(None))
    try:
        await asyncio.wait_for(done, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


@pytest.fixture
async def pid_socket(tmp_path: Path) -> AsyncIterator[Pids]:
    """A unix socket path and a queue of the pid lists that processes report to it."""
    reports: asyncio.Queue[list[int]] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reports.put_nowait([int(p) for p in (await reader.read()).split()])
        writer.close()
        await writer.wait_closed()

    path = str(tmp_path / "pids.sock")
    server = await asyncio.start_unix_server(handle, path)
    async with server:
        yield path, reports


@pytest.fixture
def fake_cli(tmp_path: Path) -> Path:
    path = tmp_path / "fake_cli.py"
    path.write_text(FAKE_CLI)
    return path


def terminal(fake_cli: Path, mode: str, **options: Any) -> TerminalExecutor:
    template = [PY, str(fake_cli), mode, "{prompt}"]
    spec = PoolSpec(
        name="ai", worker_type="terminal-claude", command_template=template, options=options
    )
    return TerminalExecutor(spec, grace=GRACE)


def shell(*allowed: str) -> ShellExecutor:
    return ShellExecutor(
        PoolSpec(name="sh", worker_type="shell", allowed_commands=list(allowed)), grace=GRACE
    )


def python(**fields: Any) -> PythonExecutor:
    return PythonExecutor(PoolSpec(name="py", worker_type="python", **fields))


async def test_builtins_directly() -> None:
    assert builtins.echo("a", "b", k=1) == "a"
    assert builtins.echo(k=1) == {"k": 1}
    assert builtins.echo() is None
    assert await builtins.sleep(0.01) == 0.01
    assert await builtins.sleep("0") == 0.0
    assert builtins.BUILTINS["noop"](1, x=2) is None
    assert builtins.add(1, 2, 3.5) == 6.5
    assert builtins.add() == 0
    with pytest.raises(RuntimeError, match="boom"):
        builtins.fail("boom")
    with pytest.raises(TypeError, match="argument 1"):
        builtins.add(1, "2")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        builtins.add(True)
    with pytest.raises(ValueError, match="between 0"):
        await builtins.sleep(-1)
    with pytest.raises(TypeError, match="number of seconds"):
        await builtins.sleep("soon")


@pytest.mark.parametrize(
    ("call", "args", "kwargs", "output"),
    [
        ("echo", ["hi", 2], {}, "hi"),
        ("echo", [], {"a": [1, 2]}, {"a": [1, 2]}),
        ("sleep", [0.01], {}, 0.01),
        ("noop", [1], {"x": 2}, None),
        ("add", [1, 2, 3], {}, 6),
    ],
)
async def test_python_calls_each_builtin(
    call: str, args: list[Any], kwargs: dict[str, Any], output: Any
) -> None:
    outcome = await python().run(TaskSpec(call=call, args=args, kwargs=kwargs))
    assert outcome == Outcome(output)


async def test_python_fail_and_exceptions_become_errors() -> None:
    executor = python()
    assert (await executor.run(TaskSpec(call="fail", args=["boom"]))).error == "RuntimeError: boom"
    assert (await executor.run(TaskSpec(call="fail", args=[""]))).error == "RuntimeError"
    outcome = await executor.run(TaskSpec(call="add", kwargs={"x": 1}))
    assert outcome.output is None
    assert outcome.error is not None and outcome.error.startswith("TypeError: ")


async def test_python_prompt_calls_default_function() -> None:
    assert await python().run(TaskSpec(prompt="hello")) == Outcome("hello")
    assert await python(default_function="add").run(TaskSpec(prompt="x")) == Outcome(
        None, "TypeError: add takes numbers; argument 0 is 'x'"
    )


async def test_tasks_a_pool_cannot_run() -> None:
    outcome = await python().run(TaskSpec(call="os.system", args=["true"]))
    assert (
        outcome.error == "unknown function 'os.system'; this pool has: add, echo, fail, noop, sleep"
    )
    outcome = await python().run(TaskSpec(command=["ls"]))
    assert outcome.error == "a python pool runs 'call' and 'prompt' tasks, not command tasks"
    outcome = await shell(PY).run(TaskSpec(prompt="hi"))
    assert outcome.error == "a shell pool runs 'command' tasks, not prompt tasks"


USER_MODULE = """
import asyncio, threading
def double(x): return x * 2
async def adouble(x): await asyncio.sleep(0); return x * 2
def thread_name(): return threading.current_thread().name
def int_keys(): return {1: "one"}
def pair(): return (1, "two")
def big(): return "x" * (5 * 1024 * 1024)
class Tools:
    shout = staticmethod(lambda text: text.upper())
VALUE = 42
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module importable for this test only; yields its name."""
    name = f"executor_user_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


async def test_python_registered_functions(user_module: str) -> None:
    names = ["double", "adouble", "thread_name", "int_keys", "pair", "big", "Tools.shout"]
    functions = {n.lower().removeprefix("tools."): f"{user_module}:{n}" for n in names}
    functions |= {"dumps": "json:dumps", "obj": "builtins:object"}
    executor = python(functions=functions, default_function="shout")
    assert await executor.run(TaskSpec(call="double", args=[21])) == Outcome(42)
    assert await executor.run(TaskSpec(call="adouble", args=[4])) == Outcome(8)
    assert await executor.run(TaskSpec(call="dumps", args=[[1, 2]])) == Outcome("[1, 2]")
    assert await executor.run(TaskSpec(prompt="hi")) == Outcome("HI")
    assert await executor.run(TaskSpec(call="pair")) == Outcome([1, "two"])
    assert (await executor.run(TaskSpec(call="thread_name"))).output != "MainThread"
    assert "echo" in executor.names and "dumps" in executor.names
    for bad in ("obj", "int_keys"):
        error = (await executor.run(TaskSpec(call=bad))).error
        assert error is not None and "not msgpack-serialisable" in error
    error = (await executor.run(TaskSpec(call="big"))).error
    assert error is not None and "the limit is" in error


async def test_python_registered_function_may_shadow_a_builtin() -> None:
    executor = python(functions={"echo": "json:dumps"})
    assert await executor.run(TaskSpec(prompt="x")) == Outcome('"x"')


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_xyz:f", "cannot be imported: ModuleNotFoundError"),
        ("json:no_such_function", "cannot be imported: AttributeError"),
        ("math:pi", "is a float, not callable"),
    ],
)
def test_bad_registered_function_fails_at_construction(target: str, message: str) -> None:
    with pytest.raises(ExecutorError, match=message):
        python(functions={"f": target})


def test_unknown_default_function_fails_at_construction() -> None:
    with pytest.raises(ExecutorError, match="default_function 'nope'"):
        python(default_function="nope")


async def test_python_async_function_is_cancelled_by_the_timeout() -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(python().run(TaskSpec(call="sleep", args=[60])), 0.05)


async def test_shell_runs_an_allowed_command() -> None:
    outcome = await shell(PY).run(TaskSpec(command=[PY, "-c", "print('hi')"]))
    assert outcome == Outcome("hi\n", None, 0)


async def test_shell_rejects_a_command_off_the_allow_list() -> None:
    outcome = await shell(PY).run(TaskSpec(command=["rm", "-rf", "/"]))
    assert outcome.error == f"command 'rm' is not in this pool's allowed_commands: {PY}"
    assert outcome.exit_code is None


async def test_shell_allow_list_matches_resolved_paths_not_file_symlinks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    real = bindir / "real"
    real.write_text(f"#!{PY}\nprint('real ran')\n")
    real.chmod(real.stat().st_mode | stat.S_IXUSR)
    (bindir / "alias").symlink_to(real)
    impostor = tmp_path / "real"  # same basename, another directory
    impostor.write_text(f"#!{PY}\nprint('impostor')\n")
    impostor.chmod(impostor.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bindir))
    executor = shell("real")
    assert (await executor.run(TaskSpec(command=["real"]))).output == "real ran\n"
    assert (await executor.run(TaskSpec(command=[str(real)]))).output == "real ran\n"
    for denied in (str(impostor), "alias"):
        error = (await executor.run(TaskSpec(command=[denied]))).error
        assert error is not None and "not in this pool's allowed_commands" in error
    assert shell("alias").resolve("real") is None  # a symlinked entry allows only itself


async def test_shell_non_zero_exit_reports_stderr_tail() -> None:
    script = "import sys; print('partial'); sys.stderr.write('x' * 5000 + 'disk full'); sys.exit(3)"
    outcome = await shell(PY).run(TaskSpec(command=[PY, "-c", script]))
    assert outcome.output == "partial\n" and outcome.exit_code == 3
    assert outcome.error is not None
    assert outcome.error.startswith(f"command {PY!r} exited with code 3; stderr: …")
    assert outcome.error.endswith("disk full") and len(outcome.error) < 2200


async def test_shell_reports_death_by_signal() -> None:
    script = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    outcome = await shell(PY).run(TaskSpec(command=[PY, "-c", script]))
    assert outcome.exit_code == -9
    assert outcome.error == f"command {PY!r} was killed by signal SIGKILL"


async def test_shell_truncates_stdout() -> None:
    script = "import sys; sys.stdout.write('x' * (3 * 1024 * 1024))"
    outcome = await shell(PY).run(TaskSpec(command=[PY, "-c", script]))
    assert outcome.exit_code == 0 and outcome.error is None
    note = f"[stdout truncated: kept the first {MAX_CAPTURE_BYTES} of {3 * 1024 * 1024} bytes]"
    assert outcome.output == "x" * MAX_CAPTURE_BYTES + "\n" + note


def test_shell_missing_allowed_command_fails_at_construction() -> None:
    with pytest.raises(ExecutorError, match="'no-such-program-xyz' is not an executable on PATH"):
        shell(PY, "no-such-program-xyz")


@pytest.mark.parametrize("stop", ["cancel", "aclose"])
async def test_shell_cancel_or_aclose_kills_the_process_group(
    fake_cli: Path, pid_socket: Pids, monkeypatch: pytest.MonkeyPatch, stop: str
) -> None:
    path, reports = pid_socket
    monkeypatch.setenv("PID_SOCKET", path)
    executor = shell(PY)
    run = asyncio.create_task(executor.run(TaskSpec(command=[PY, str(fake_cli), "hang", "-"])))
    leader, grandchild = await asyncio.wait_for(reports.get(), 5)
    if stop == "cancel":
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    else:
        await executor.aclose()
        outcome = await run
        assert outcome.exit_code == -15
        assert outcome.error == f"command {PY!r} was killed by signal SIGTERM"
    with pytest.raises(ProcessLookupError):
        os.kill(leader, 0)  # killed and reaped
    assert await exits(grandchild)


async def test_terminal_parses_stream_json(fake_cli: Path) -> None:
    outcome = await terminal(fake_cli, "stream").run(TaskSpec(prompt="hello"))
    assert outcome == Outcome("answer: hello", None, 0)


async def test_terminal_collects_assistant_text_without_a_result(fake_cli: Path) -> None:
    outcome = await terminal(fake_cli, "assistant-only").run(TaskSpec(prompt="q"))
    assert outcome == Outcome("part one\npart two", None, 0)


async def test_terminal_keeps_plain_text(fake_cli: Path) -> None:
    outcome = await terminal(fake_cli, "plain").run(TaskSpec(prompt="q"))
    assert outcome == Outcome("line one\n[1, 2]\nlast line without newline", None, 0)


async def test_terminal_is_error_result(fake_cli: Path) -> None:
    outcome = await terminal(fake_cli, "error").run(TaskSpec(prompt="q"))
    assert outcome.output == "ran out of turns" and outcome.exit_code == 0
    name = os.path.basename(PY)
    assert outcome.error == f"{name} reported an error (error_max_turns): ran out of turns"


async def test_terminal_crash_without_result(fake_cli: Path) -> None:
    outcome = await terminal(fake_cli, "crash").run(TaskSpec(prompt="q"))
    assert outcome.exit_code == 1 and outcome.error is not None
    assert "(no result) exited with code 1; stderr: auth failed: no API key" in outcome.error


async def test_terminal_substitutes_the_prompt_safely(fake_cli: Path) -> None:
    spec = PoolSpec(
        name="ai",
        worker_type="terminal-qwen",
        command_template=[PY, str(fake_cli), "argv", "{prompt}", "--say={prompt}"],
    )
    outcome = await TerminalExecutor(spec).run(TaskSpec(prompt="--yolo; rm -rf $HOME"))
    argv = json.loads(outcome.output)["argv"]
    assert argv == [" --yolo; rm -rf $HOME", "--say=--yolo; rm -rf $HOME"]


async def test_terminal_cli_env(fake_cli: Path) -> None:
    outcome = await terminal(fake_cli, "env", cli_env={"FAKE_VAR": 7}).run(TaskSpec(prompt="q"))
    assert outcome.output == "7"


async def test_terminal_stops_a_cli_that_lingers_after_its_result(
    fake_cli: Path, pid_socket: Pids
) -> None:
    path, reports = pid_socket
    outcome = await terminal(fake_cli, "linger", cli_env={"PID_SOCKET": path}).run(
        TaskSpec(prompt="q")
    )
    assert outcome == Outcome("done", None, -15)
    [pid] = await asyncio.wait_for(reports.get(), 5)
    assert reaped(pid)


@pytest.mark.parametrize("mode", ["hang", "stubborn"])
async def test_terminal_timeout_kills_the_process_group(
    fake_cli: Path, pid_socket: Pids, mode: str
) -> None:
    path, reports = pid_socket
    executor = terminal(fake_cli, mode, cli_env={"PID_SOCKET": path})
    run = asyncio.create_task(asyncio.wait_for(executor.run(TaskSpec(prompt="q")), 0.8))
    leader, grandchild = await asyncio.wait_for(reports.get(), 5)
    with pytest.raises(TimeoutError):
        await run
    assert reaped(leader) and await exits(grandchild)


async def test_terminal_reports_an_argument_too_long(fake_cli: Path) -> None:
    outcome = await terminal(fake_cli, "stream").run(TaskSpec(prompt="x" * 200_000))
    assert outcome.error is not None and "Linux allows 128 KiB per argument" in outcome.error


@pytest.mark.parametrize("worker_type", ["terminal-claude", "terminal-qwen"])
def test_missing_cli_fails_at_construction(
    worker_type: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    binary = DEFAULT_TEMPLATES[WorkerType(worker_type)][0]
    with (
        caplog.at_level(logging.WARNING, logger="worker.executors"),
        pytest.raises(
            ExecutorError, match=f"{worker_type} pool needs the '{binary}' CLI on PATH"
        ) as raised,
    ):
        build_executor(PoolSpec(name="ai", worker_type=worker_type))
    # the host's PATH goes to its log, never into the error a remote caller reads
    assert str(tmp_path) not in str(raised.value) and "PATH=" not in str(raised.value)
    assert f"PATH={tmp_path}" in caplog.text


def test_bad_terminal_config_fails_at_construction(fake_cli: Path) -> None:
    with pytest.raises(ExecutorError, match="no '\\{prompt\\}' placeholder"):
        TerminalExecutor(
            PoolSpec(name="ai", worker_type="terminal-claude", command_template=[PY, "-V"])
        )
    with pytest.raises(ExecutorError, match="cli_env must map"):
        terminal(fake_cli, "stream", cli_env=["A=1"])


def test_stream_json_collector() -> None:
    seen: list[str] = []
    collector = StreamJsonCollector(on_result=lambda: seen.append("result"), limit=12)
    for line in [b'"a json string"', b"{not json", b'{"no_type": 1}', b'{"type": "system"}']:
        collector.feed_line(line)
    assert collector.text() == '"a json stri\n[output truncated: 26 more characters]'
    collector.feed_line(b'{"type": "result", "is_error": true}')
    collector.feed_line(b'{"type": "result", "result": "ignored"}')
    assert seen == ["result"] and collector.is_error
    assert collector.output() == collector.text()  # a result without text keeps what came before
    deep = StreamJsonCollector(limit=5)
    deep.feed_line(b'{"a":' * 100_000)  # json.loads raises RecursionError: kept as text
    assert deep.text().startswith('{"a":') and deep.result is None


def test_lines_skip_overlong_lines() -> None:
    got: list[bytes] = []
    lines = _Lines(got.append, limit=8)
    for chunk in [b"ok\nfirst", b"-too-long-", b"-line\nnext\n", b"tail"]:
        lines.feed(chunk)
    lines.close()
    assert got == [b"ok", b"next", b"tail"] and lines.skipped == 1


def test_build_executor_chooses_by_worker_type(fake_cli: Path) -> None:
    assert isinstance(build_executor(PoolSpec(name="p", pool_type="local")), PythonExecutor)
    spec = PoolSpec(name="s", worker_type="shell", allowed_commands=[PY], pool_type="delegated")
    assert isinstance(build_executor(spec), ShellExecutor)
    template = [PY, str(fake_cli), "stream", "{prompt}"]
    spec = PoolSpec(name="t", worker_type="terminal-qwen", command_template=template)
    assert isinstance(build_executor(spec), TerminalExecutor)
