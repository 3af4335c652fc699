"""`mahavishnu task ...`: submit, follow, cancel and dead-letter single tasks."""

from __future__ import annotations

import dataclasses
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from orchestrator.cli import render
from orchestrator.cli.common import (
    AffinityOpt,
    ArgOpt,
    ArgvArg,
    AttemptsOpt,
    CallOpt,
    CommandOpt,
    FollowOpt,
    IdemOpt,
    JsonOpt,
    KwargOpt,
    LabelOpt,
    PromptFileOpt,
    PromptOpt,
    QueueTimeoutOpt,
    StrategyOpt,
    TagOpt,
    TimeoutOpt,
    cli_settings,
    client,
    read_prompt,
    run_async,
)
from orchestrator.cli.follow import final_result, show_final

if TYPE_CHECKING:
    from shared.models import TaskResult


task_app = typer.Typer(help="Submit, follow and cancel single tasks.", no_args_is_help=True)


@task_app.command("submit")
def task_submit(
    argv: ArgvArg = None,
    prompt: PromptOpt = None,
    prompt_file: PromptFileOpt = None,
    call: CallOpt = None,
    arg: ArgOpt = None,
    kwarg: KwargOpt = None,
    command: CommandOpt = False,
    pool: Annotated[str | None, typer.Option(help="Send to this pool (default: route).")] = None,
    strategy: StrategyOpt = None,
    affinity_key: AffinityOpt = None,
    label: LabelOpt = None,
    queue_timeout: QueueTimeoutOpt = None,
    timeout: TimeoutOpt = None,
    max_attempts: AttemptsOpt = None,
    idempotency_key: IdemOpt = None,
    tag: TagOpt = None,
    reroute_on_close: Annotated[
        bool,
        typer.Option(
            "--reroute-on-close",
            help="With --pool: if that pool closes before the task ran, route it to another "
            "eligible pool instead of failing it.",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Queue a task without waiting and print its id (warns when nothing can run it yet)."""
    settings = cli_settings()

    async def submit() -> tuple[str, str]:
        task = render.build_task(
            settings, prompt=read_prompt(prompt, prompt_file), call=call, args=arg,
            kwargs=kwarg, command=command,
            argv=argv, timeout=timeout, max_attempts=max_attempts, pool_id=pool,
            strategy=strategy, affinity_key=affinity_key, labels=render.pairs(label, "--label"),
            queue_timeout=queue_timeout,
            idempotency_key=idempotency_key, tags=tag,
            reroute_on_close=reroute_on_close or None,
        )  # fmt: skip
        async with client(settings) as pools:
            task_id = await pools.submit(task, expect_reply=False)
            if await pools.orchestrators():
                return task_id, ""
            start = "start one with `mahavishnu orchestrator`"
            if not task.pool_id:
                return (
                    task_id,
                    f"no orchestrator is running; the task waits in the ingress ({start})",
                )
            if not await pools.live_workers(task.pool_id):
                return task_id, (
                    f"no orchestrator is running and pool {task.pool_id} has no live worker; "
                    f"the task waits in its queue: {start}"
                )
            return task_id, ""

    task_id, warning = run_async(settings, submit)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if json_out:
        render.emit_json({"task_id": task_id} | ({"warning": warning} if warning else {}))
    else:
        print(task_id)


@task_app.command("status")
def task_status(
    task_id: Annotated[str, typer.Argument(help="The task.")], json_out: JsonOpt = False
) -> None:
    """Show a task's current state (its result once final)."""
    settings = cli_settings()

    async def status() -> TaskResult:
        async with client(settings) as pools:
            return await pools.status(task_id)

    result = run_async(settings, status)
    if json_out:
        render.emit_json(result.model_dump(mode="json"))
    else:
        render.stdout_console().print(render.task_table(result))


@task_app.command("result")
def task_result(
    task_id: Annotated[str, typer.Argument(help="The task.")],
    timeout: Annotated[
        float | None, typer.Option(help="Seconds to wait (default: forever).")
    ] = None,
    follow: FollowOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Wait for a task's final result and print it (exit 1 unless it completed)."""
    settings = cli_settings()

    async def result() -> tuple[TaskResult, bool]:
        async with client(settings) as pools:
            return await final_result(pools, task_id, timeout, follow=follow, json_out=json_out)

    found, printed = run_async(settings, result)
    show_final(found, printed, follow=follow, json_out=json_out)


@task_app.command("cancel")
def task_cancel(
    task_id: Annotated[str, typer.Argument(help="The task.")], json_out: JsonOpt = False
) -> None:
    """Cancel a task: a queued one never starts, a running one is stopped."""
    settings = cli_settings()

    async def cancel() -> tuple[str, str]:
        async with client(settings) as pools:
            before = await pools.cancel(task_id)
            return str(before), str((await pools.status(task_id)).status)

    before, now = run_async(settings, cancel)
    final = before in ("completed", "failed", "cancelled", "dead_lettered")
    if json_out:
        render.emit_json(
            {"task_id": task_id, "previous_status": before, "status": now, "cancelled": not final}
        )
    elif final:
        render.stdout_console().print(f"task {task_id} was already {before}; nothing changed")
    else:
        render.stdout_console().print(f"task {task_id} cancelled (it was {before}; now {now})")


@task_app.command("dead-letters")
def task_dead_letters(
    requeue: Annotated[
        str | None, typer.Option(help="Re-submit the dead letter with this entry id.")
    ] = None,
    pool: Annotated[str | None, typer.Option(help="Only this pool's dead letters.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Most entries to show.")] = 20,
    json_out: JsonOpt = False,
) -> None:
    """List dead letters (newest first) with their reason, or requeue one as a new task."""
    settings = cli_settings()

    async def letters() -> tuple[int, list[Any], str | None]:
        async with client(settings) as pools:
            if requeue:
                letter, task_id = await pools.requeue_dead_letter(requeue, pool_id=pool)
                return 1, [letter], task_id
            total, found = await pools.dead_letters(limit=limit, pool_id=pool)
            return total, found, None

    total, found, task_id = run_async(settings, letters)
    docs = [{k: v for k, v in dataclasses.asdict(x).items() if k != "message"} for x in found]
    if json_out:
        render.emit_json({"total": total, "entries": docs, "requeued_task_id": task_id})
    elif task_id:
        render.stdout_console().print(f"dead letter {requeue} re-submitted as task {task_id}")
    else:
        table = Table(title=f"{len(found)} of {total} dead letter(s)")
        for column in ("entry", "task", "pool", "attempts", "reason"):
            table.add_column(column, overflow="fold")
        for x in found:
            table.add_row(x.entry_id, x.task_id, x.pool_id, str(x.attempts), x.reason)
        render.stdout_console().print(table)
