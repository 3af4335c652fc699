"""`--follow` of `pool exec`, `pool route` and `task result`: a task's output as it comes.

Output chunks go to stdout as they arrive, the steps (queued, routed, running) to stderr, and
the result's summary line to stderr at the end; the result's output is printed only when none
came live (a Python function's return value, say). With `--json`, stdout carries JSON Lines
instead: one object per step or chunk (`kind`, `pool_id`, `worker_id`, `attempt`, `text`), then
the result document with `"kind": "result"`; nothing else goes to stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import typer

from orchestrator.cli import render
from shared.models import TaskResult
from shared.progress import ProgressEvent, follow_task


def _json_line(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _show(event: ProgressEvent, json_out: bool) -> None:
    if json_out:
        _json_line(event.as_dict())
    elif event.kind == "output":
        sys.stdout.write(event.text)
        sys.stdout.flush()
    else:
        render.stderr_console().print(f"[dim]… {event.message()}[/]", soft_wrap=True)


async def follow_result(
    pools: Any, task_id: str, timeout: float | None, *, json_out: bool
) -> tuple[TaskResult, bool]:
    """Show the task's steps and output until its result; return it and whether output came."""
    waiting = asyncio.ensure_future(pools.result(task_id, timeout))
    ends_line = None  # None: no output came; else whether it ended with a newline
    try:
        async for event in follow_task(pools, task_id, waiting):
            _show(event, json_out)
            if event.kind == "output" and event.text:
                ends_line = event.text.endswith("\n")
    finally:
        if not waiting.done():
            waiting.cancel()
    result: TaskResult = await waiting  # done by now: its result, or the wait's error
    if ends_line is False and not json_out:
        sys.stdout.write("\n")
    return result, ends_line is not None


def show_followed(result: TaskResult, printed: bool, json_out: bool) -> None:
    """The end of a follow: the result (JSON line, or summary on stderr); exit 1 unless it
    completed."""
    if json_out:
        _json_line({"kind": "result", **result.model_dump(mode="json")})
    else:
        if not printed and result.output is not None:
            sys.stdout.write(render.as_text(result.output).rstrip("\n") + "\n")
        sys.stdout.flush()
        render.stderr_console().print(render.result_line(result), soft_wrap=True)
    if not result.ok:
        raise typer.Exit(1)


async def final_result(
    pools: Any, task_id: str, timeout: float | None, *, follow: bool, json_out: bool
) -> tuple[TaskResult, bool]:
    """The task's final result, its steps and output shown on the way with `--follow`; and
    whether output was shown."""
    if follow:
        return await follow_result(pools, task_id, timeout, json_out=json_out)
    return await pools.result(task_id, timeout), False


def show_final(result: TaskResult, printed: bool, *, follow: bool, json_out: bool) -> None:
    """Print a final result as `--follow` ends or as a plain wait shows it; exit 1 unless it
    completed."""
    if follow:
        show_followed(result, printed, json_out)
    else:
        render.show_result(result, json_out)
