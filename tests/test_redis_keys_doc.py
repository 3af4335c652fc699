"""Every `redis-cli` command of docs/redis-keys.md runs against a live system, and every key
`shared/keys.py` can name is documented there."""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from shared.config import Settings
from shared.connection import text
from shared.keys import Keys
from shared.models import TaskStatus

DOC = Path(__file__).resolve().parent.parent / "docs" / "redis-keys.md"
ERROR_LINE = re.compile(r"^(\(error\) )?(ERR|WRONGTYPE|NOGROUP|MOVED|ASK|CROSSSLOT|NOSCRIPT)\b")


def doc_commands() -> list[str]:
    """The `redis-cli ...` lines of the page's sh blocks."""
    commands, inside = [], False
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```sh"
            continue
        if inside and line.startswith("redis-cli "):
            commands.append(line)
    return commands


@pytest.mark.unit
def test_every_key_is_documented() -> None:
    page = DOC.read_text(encoding="utf-8")
    keys = Keys("mhv:")
    names = {
        "ingress": keys.ingress,
        "control": keys.control,
        "pools": keys.pools,
        "events": keys.events,
        "delayed": keys.delayed,
        "dlq": keys.dlq,
        "scheduler_lease": keys.scheduler_lease,
        "epoch": keys.epoch,
        "pool": keys.pool("<pool>"),
        "pool_tasks": keys.pool_tasks("<pool>"),
        "pool_inbox": keys.pool_inbox("<pool>"),
        "pool_load": keys.pool_load("<pool>"),
        "pool_memory": keys.pool_memory("<pool>"),
        "pool_workers": keys.pool_workers("<pool>"),
        "pool_lease": keys.pool_lease("<pool>"),
        "worker": keys.worker("<worker>"),
        "orchestrator": keys.orchestrator("<orchestrator>"),
        "task": keys.task("<task>"),
        "pool_task": keys.pool_task("<pool>", "<task>"),
        "task_progress": keys.task_progress("<pool>", "<task>"),
        "pool_memory_sync": keys.pool_memory_sync("<pool>"),
        "memory_sync_pools": keys.memory_sync_pools,
        "memory_sync_status": keys.memory_sync_status,
        "replies": keys.replies("<client>"),
        "idempotency": keys.idempotency("<key>"),
    }
    methods = {
        name
        for name in dir(Keys)
        if not name.startswith("_")
        and name not in {"kind_of", "task_state", "sent_marker"}
        and name != "prefix"
    }
    assert methods <= set(names), f"keys without a line here: {sorted(methods - set(names))}"
    for method, key in names.items():
        assert f"### `{key}`" in page or f"`{key}`" in page, (method, key)
    for verb in ("XRANGE", "XPENDING", "XINFO GROUPS", "HGETALL", "ZRANGE"):
        assert any(f"redis-cli {verb} " in c for c in doc_commands()), verb


def cli_base(url: str) -> list[str]:
    if url.startswith("redis+cluster://"):
        host, _, port = urlsplit(url).netloc.split(",")[0].rpartition("@")[2].partition(":")
        return ["redis-cli", "-c", "-h", host, "-p", port or "6379"]
    return ["redis-cli", "-u", url]


def hash_fields(lines: list[str], names: list[str]) -> dict[str, str]:
    """Fields of redis-cli's HGETALL output (name line, value line; the msgpack `result` may
    span lines, so fields are found by name rather than by position)."""
    return {name: lines[lines.index(name) + 1] for name in names}


async def run(base: list[str], args: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *base, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, (args, out, err)
    return out.decode(errors="replace")


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
async def test_every_documented_command_runs(
    settings: Settings, orchestrator: Any, manager: Any, redis: Any
) -> None:
    keys = settings.keys
    pool = await manager.spawn_pool("local", name="docs", min_workers=1)
    ids = await manager.submit_many(
        [
            {"call": "echo", "args": ["hello, operator"], "pool_id": pool},
            {"call": "add", "args": [1, 2], "pool_id": pool, "idempotency_key": "docs-key"},
            {"call": "noop"},
            {"call": "fail", "args": ["on purpose"], "pool_id": pool, "max_attempts": 1},
        ]
    )
    results = [await manager.result(task_id, timeout=60) for task_id in ids]
    assert [r.status for r in results] == [
        TaskStatus.COMPLETED,
        TaskStatus.COMPLETED,
        TaskStatus.COMPLETED,
        TaskStatus.DEAD_LETTERED,
    ]
    workers = sorted(text(w) for w in await redis.smembers(keys.pool_workers(pool)))
    assert workers
    values = {
        "<pool>": pool,
        "<task>": ids[0],
        "<worker>": workers[0],
        "<orchestrator>": orchestrator.id,
        "<client>": manager.client_id,
        "<key>": "docs-key",
    }
    base = cli_base(settings.redis_url)
    outputs: dict[str, str] = {}
    for line in doc_commands():
        command = line
        for placeholder, value in values.items():
            command = command.replace(placeholder, value)
        args = [arg.replace("mhv:", settings.key_prefix, 1) for arg in shlex.split(command)[1:]]
        out = await run(base, args)
        for out_line in out.splitlines():
            assert not ERROR_LINE.match(out_line), (line, out)
        outputs[line] = out
        # what exists in any live system prints something (queues may be empty by now)
        if args[0] in {"HGETALL", "SMEMBERS", "HMGET", "XREVRANGE"} or args[:2] == [
            "XINFO",
            "GROUPS",
        ]:
            assert out.strip(), f"{line} printed nothing"
    # one HGETALL reads a task's status, pool, worker, attempts, ISO times and output head
    state = outputs["redis-cli HGETALL 'mhv:pool:{<pool>}:task:<task>'"].splitlines()
    fields = hash_fields(state, ["status", "pool", "worker", "attempts", "output"])
    fields |= hash_fields(state, ["submitted", "started", "finished"])
    assert fields["status"] == "completed" and fields["pool"] == pool
    assert fields["worker"] in workers and fields["attempts"] == "1"
    for name in ("submitted", "started", "finished"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", fields[name]), fields
    assert "hello, operator" in fields["output"]
    load = outputs["redis-cli HGETALL 'mhv:pool:{<pool>}:load'"].splitlines()
    load_fields = hash_fields(load, ["workers", "in_flight", "queued", "completed", "updated"])
    assert load_fields["completed"] == "3" and load_fields["updated"].endswith("Z")
    dlq = outputs["redis-cli XRANGE 'mhv:{dlq}' - + COUNT 10"]
    assert ids[3] in dlq and "on purpose" in dlq
