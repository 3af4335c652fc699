"""Live progress without Redis: the stream-json events the AI-CLI executor shows live (the
shapes of Claude Code's `--output-format stream-json`, with and without partial messages), the
shell executor's live stdout, the publisher's bounds, top's figures, and `mahavishnu --version`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.cli.top_data import percentile, pool_figures, sparkline, worker_kind
from shared.models import PoolSpec, TaskSpec
from shared.progress import _State, _Tracker
from shared.version import package_version
from worker.executors import ShellExecutor, StreamJsonCollector, TerminalExecutor
from worker.progress import MAX_ENTRY_CHARS, set_output_sink

pytestmark = pytest.mark.unit

FAKE_CLAUDE = str(Path(__file__).with_name("fake_claude.py"))


def line(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def test_collector_shows_text_blocks_and_tool_calls() -> None:
    shown: list[str] = []
    collector = StreamJsonCollector(on_text=shown.append)
    collector.feed_line(line({"type": "system", "subtype": "init", "session_id": "s"}))
    content = [{"type": "text", "text": "Reading."}, {"type": "tool_use", "name": "Read"}]
    collector.feed_line(line({"type": "assistant", "message": {"content": content}}))
    collector.feed_line(line({"type": "user", "message": {"content": [{"type": "tool_result"}]}}))
    collector.feed_line(b"a plain line")
    collector.feed_line(line({"type": "result", "subtype": "success", "result": "ok"}))
    collector.feed_line(line({"type": "assistant", "message": {"content": "after the end"}}))
    assert shown == ["Reading.\n", "[tool: Read]\n", "a plain line\n"]
    assert collector.output() == "ok"


def test_collector_shows_partial_message_deltas_once() -> None:
    shown: list[str] = []
    collector = StreamJsonCollector(on_text=shown.append)
    for piece in ("Hel", "lo"):
        delta = {"type": "content_block_delta", "index": 0}
        delta["delta"] = {"type": "text_delta", "text": piece}
        collector.feed_line(line({"type": "stream_event", "event": delta, "session_id": "s"}))
    message = {"content": [{"type": "text", "text": "Hello"}]}
    collector.feed_line(line({"type": "assistant", "message": message}))
    assert shown == ["Hel", "lo"]  # the whole message repeats none of it
    assert collector.text() == "Hello"


async def test_terminal_executor_sends_chunks_to_the_task_sink() -> None:
    spec = PoolSpec(
        name="ai",
        worker_type="terminal-claude",
        command_template=[sys.executable, FAKE_CLAUDE, "{prompt}"],
    )
    shown: list[str] = []

    async def run() -> Any:
        set_output_sink(shown.append)  # this task's context only
        return await TerminalExecutor(spec).run(TaskSpec(prompt="x"))

    outcome = await asyncio.create_task(run())
    assert outcome.output == "Done: two files."
    assert "".join(shown) == "Looking at: x\n[tool: Bash]\nDone: two files.\n"


async def test_shell_executor_sends_stdout_live() -> None:
    spec = PoolSpec(name="sh", worker_type="shell", allowed_commands=["printf"])
    shown: list[str] = []

    async def run() -> Any:
        set_output_sink(shown.append)
        return await ShellExecutor(spec).run(TaskSpec(command=["printf", "é-1\\né-2\\n"]))

    outcome = await asyncio.create_task(run())
    assert outcome.output == "é-1\né-2\n" == "".join(shown)


async def test_publisher_bounds_an_entry_and_keeps_attempts_apart() -> None:
    from shared.config import Settings
    from worker.progress import ProgressPublisher

    publisher = ProgressPublisher(None, Settings(), "p", "w")  # type: ignore[arg-type]
    publisher.add("t", 1, "x" * (MAX_ENTRY_CHARS + 10))
    pending = publisher._pending["t"]
    assert pending.size == MAX_ENTRY_CHARS and pending.hidden == 10
    publisher.add("t", 2, "new attempt")
    assert publisher._pending["t"].parts == ["new attempt"]
    assert publisher.has_pending(["t"]) and not publisher.has_pending(["u"])


def test_tracker_reports_each_step_once_in_order() -> None:
    tracker = _Tracker()
    seen: list[str] = []
    for state in (
        _State("pending", "", False, "", 0),
        _State("pending", "", False, "", 0),
        _State("running", "p1", True, "w1", 1),  # a look missed the move to p1
    ):
        seen += [e.message() for e in tracker.from_state(state)]
    entry = {b"kind": b"output", b"attempt": b"2", b"worker": b"w2", b"text": b"hi"}
    seen += [e.message() for e in tracker.from_entry("p1", entry)]
    assert seen == [
        "queued for routing",
        "routed to pool p1",
        "running on w1 (attempt 1)",
        "running on w2 (attempt 2)",  # output of a run no look saw start: its step first
        "hi",
    ]
    direct = _Tracker().from_state(_State("completed", "p", False, "w", 1))
    assert [e.message() for e in direct] == ["queued on pool p", "running on w (attempt 1)"]
    assert _Tracker().from_state(_State("cancelled", "p", False, "", 0))[-1].kind == "queued"


def test_top_figures() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([1, 2, 3, 4], 0.5) == 2 and percentile(list(range(1, 101)), 0.99) == 99
    assert sparkline([None, 0.0, 50.0, 100.0], 100.0) == " ▁▅█"
    figures = pool_figures([(95.0, 10.0), (99.0, 30.0), (10.0, 99.0)], 100.0, False, 60.0, 6)
    assert figures["finished_in_window"] == 2 and figures["p99_ms"] == 30.0
    assert worker_kind({"managed_by": ""}, "local") == "external"
    assert worker_kind({"managed_by": "o"}, "delegated") == "remote"


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"mahavishnu {package_version()}\n"


def talker(n: int) -> str:
    """A pool function that reports live output from its thread."""
    from worker.progress import report_output

    for i in range(n):
        report_output(f"step {i}\n")
    return "done"


async def test_a_python_function_reports_output_from_its_thread() -> None:
    from shared.config import Settings
    from worker.executors import PythonExecutor
    from worker.progress import ProgressPublisher

    spec = PoolSpec(name="py", functions={"talker": f"{__name__}:talker"})
    publisher = ProgressPublisher(None, Settings(), "p", "w")  # type: ignore[arg-type]

    async def run() -> Any:
        set_output_sink(publisher.sink("t", 1))
        return await PythonExecutor(spec).run(TaskSpec(call="talker", args=[2]))

    # the thread hands each call to the loop before its own completion: they ran first
    outcome = await asyncio.create_task(run())
    assert outcome.output == "done"
    assert publisher._pending["t"].parts == ["step 0\n", "step 1\n"]
