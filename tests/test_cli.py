"""The `mahavishnu` command line.

Validation and usage errors run in-process with typer's CliRunner (no Redis needed). The
end-to-end tests run an Orchestrator in-process against the real Redis under a unique key prefix
and the CLI as subprocesses (`python -m orchestrator ...`), so every call is a separate process
that sees only what Redis holds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from orchestrator.broker import free_port
from orchestrator.cli import app
from orchestrator.orchestrator import Orchestrator
from shared.client import PoolManager
from shared.codec import TaskDelegate, encode, pack
from shared.config import Settings, load_settings
from shared.models import TaskSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("MAHAVISHNU_REDIS_URL", "redis://127.0.0.1:6379/0")
CLI_TIMEOUT = 60.0


def _redis_answers() -> bool:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1.0)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


needs_redis = pytest.mark.skipif(not _redis_answers(), reason=f"no Redis answers at {REDIS_URL}")


def _one_line_error(result: Any) -> str:
    """The stderr of a failed CliRunner call, checked to be one `error: ...` line."""
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert result.stdout == ""
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return str(lines[0])


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def prefix() -> Iterator[str]:
    """A unique key prefix; every key under it is deleted afterwards."""
    value = f"test-cli-{uuid.uuid4().hex[:12]}:"
    yield value
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{value}*", count=1000))
        if keys:
            client.delete(*keys)
    except (redis.RedisError, OSError):
        pass
    finally:
        client.close()


@pytest.fixture
def settings(prefix: str) -> Settings:
    return load_settings(key_prefix=prefix, redis_url=REDIS_URL)


@pytest.fixture
def env(prefix: str) -> dict[str, str]:
    """The environment of CLI calls: the unique prefix and the Redis the tests use."""
    return {
        "MAHAVISHNU_KEY_PREFIX": prefix,
        "MAHAVISHNU_REDIS_URL": REDIS_URL,
        "MAHAVISHNU_EMBEDDED_BROKER": "false",
    }


@pytest.fixture
async def orchestrator(settings: Settings, tmp_path: Path) -> AsyncIterator[Orchestrator]:
    """An orchestrator running in this event loop until the test ends."""
    orch = Orchestrator(settings, log_dir=tmp_path / "logs")
    running = asyncio.create_task(orch.run())
    ready = asyncio.ensure_future(orch.wait_ready())
    await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
    if running.done():
        ready.cancel()
        running.result()
    try:
        yield orch
    finally:
        orch.request_stop()
        await running


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[PoolManager]:
    async with PoolManager(settings) as pools:
        yield pools


async def mhv(env: dict[str, str], *args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    """Run `python -m orchestrator ARGS` and return (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
        cwd=cwd or REPO_ROOT,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def mhv_json(env: dict[str, str], *args: str) -> Any:
    """Run a CLI command with `--json`, check it succeeded, and parse its stdout."""
    code, out, err = await mhv(env, *args, "--json")
    assert code == 0, (args, out, err)
    assert "Traceback" not in err
    return json.loads(out)


# ------------------------------------------------------------------------------ in-process


def test_help_lists_every_command(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("up", "orchestrator", "worker", "mcp", "pool", "task", "inspect", "top", "bench"):
        assert name in result.stdout
    result = runner.invoke(app, ["pool", "--help"])
    assert result.exit_code == 0
    for name in ("spawn", "list", "exec", "route", "scale", "close", "close-all", "health"):
        assert name in result.stdout
    assert "monitor" in result.stdout


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--min-workers", "5", "--max-workers", "2"], ["min_workers (5)", "max_workers (2)"]),
        (["--type", "nope"], ["pool_type='nope'", "unknown pool type"]),
        (["--worker-type", "gpu"], ["worker_type='gpu'"]),
        (["--concurrency", "0"], ["concurrency=0"]),
        (["--name", "has space"], ["pool name 'has space'"]),
        (["--label", "nokey"], ["--label 'nokey'", "NAME=VALUE"]),
        (["--function", "f=no_colon"], ["'f'", "module:function"]),
        (["--worker-type", "shell"], ["allowed_commands"]),
    ],
)
def test_bad_pool_flags_are_one_line_errors(
    runner: CliRunner, env: dict[str, str], flags: list[str], expected: list[str]
) -> None:
    result = runner.invoke(app, ["pool", "spawn", *flags], env=env)
    line = _one_line_error(result)
    for fragment in expected:
        assert fragment in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["pool", "exec", "p1"], "exactly one of --prompt, --command or --call"),
        (["pool", "exec", "p1", "--prompt", "x", "--call", "echo"], "got --prompt and --call"),
        (["pool", "exec", "p1", "--prompt", "x", "--arg", "1"], "--arg and --kwarg go with"),
        (["pool", "exec", "p1", "ls", "/tmp"], "put --command before a program"),
        (["pool", "exec", "p1", "--command"], "--command needs the program"),
        (["pool", "exec", "p1", "--prompt", "x", "--timeout", "-1"], "timeout=-1.0"),
        (["pool", "route", "--prompt", "x", "--strategy", "sideways"], "strategy='sideways'"),
        (["pool", "route", "--prompt", "x", "--strategy", "affinity"], "affinity_key"),
        (["task", "submit", "--call", "echo", "--kwarg", "novalue"], "--kwarg 'novalue'"),
        (["task", "submit", "--prompt", "x", "--pool", "bad id"], "pool_id 'bad id'"),
    ],
)
def test_bad_task_options_are_one_line_errors(
    runner: CliRunner, env: dict[str, str], args: list[str], expected: str
) -> None:
    assert expected in _one_line_error(runner.invoke(app, args, env=env))


@pytest.mark.parametrize(
    "args",
    [
        ["pool", "exec", "p1", "--no-such-flag"],
        ["pool", "scale", "p1", "many"],
        ["pool", "monitor", "--watch", "--json"],
        ["task", "status"],
        ["nonsense"],
    ],
)
def test_usage_errors_exit_2(runner: CliRunner, env: dict[str, str], args: list[str]) -> None:
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_invalid_settings_name_the_field_value_and_source(
    runner: CliRunner, env: dict[str, str]
) -> None:
    env = {**env, "MAHAVISHNU_POOL_ROUTING_STRATEGY": "sideways"}
    line = _one_line_error(runner.invoke(app, ["pool", "list"], env=env))
    assert "pool_routing_strategy='sideways'" in line
    assert "MAHAVISHNU_POOL_ROUTING_STRATEGY" in line


def test_settings_file_typos_and_bad_bytes_are_one_line_errors(
    runner: CliRunner, env: dict[str, str], tmp_path: Path
) -> None:
    env = {**env, "MAHAVISHNU_SETTINGS_DIR": str(tmp_path)}
    local = tmp_path / "local.yaml"
    local.write_text("redis_ulr: redis://127.0.0.1:6379/0\n")
    line = _one_line_error(runner.invoke(app, ["pool", "list"], env=env))
    assert line == (
        f"error: invalid settings: unknown key 'redis_ulr' in {local} (did you mean 'redis_url'?)"
    )
    local.write_bytes(b"akosha_url: 'http://\xff'\n")
    line = _one_line_error(runner.invoke(app, ["pool", "list"], env=env))
    assert f"{local} is not UTF-8 text: byte 0xff at offset 20" in line
    assert "malformed" not in line
    local.unlink()
    result = runner.invoke(app, ["pool", "list"], env={**env, "MAHAVISHNU_POOL_LIMIT": "3"})
    assert "unknown environment variable MAHAVISHNU_POOL_LIMIT" in _one_line_error(result)


@pytest.mark.parametrize(
    "url", ["http://:hunter22secret@127.0.0.1/0", "redis://:hunter22secret@127.0.0.1:port/0"]
)
def test_a_bad_redis_url_is_one_line_without_the_password(
    runner: CliRunner, env: dict[str, str], url: str
) -> None:
    result = runner.invoke(app, ["pool", "list"], env={**env, "MAHAVISHNU_REDIS_URL": url})
    line = _one_line_error(result)
    assert "redis_url" in line
    assert "hunter22secret" not in result.output


def test_unreachable_redis_is_one_line_without_the_password(
    runner: CliRunner, env: dict[str, str]
) -> None:
    url = f"redis://:hunter22secret@127.0.0.1:{free_port()}/0"
    result = runner.invoke(
        app, ["pool", "list", "--json"], env={**env, "MAHAVISHNU_REDIS_URL": url}
    )
    line = _one_line_error(result)
    assert "hunter22secret" not in result.output
    assert "redis://:***@127.0.0.1" in line


def test_mcp_runs_the_facade_with_the_options(
    runner: CliRunner, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Settings, dict[str, Any]]] = []
    fake = ModuleType("orchestrator.mcp.server")
    fake.run_mcp = lambda settings, **kw: calls.append((settings, kw))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "orchestrator.mcp.server", fake)
    result = runner.invoke(app, ["mcp", "--http", "--port", "9999"], env=env)
    assert result.exit_code == 0, result.output
    assert calls[0][1] == {"http": True, "host": "127.0.0.1", "port": 9999, "require_auth": True}
    assert calls[0][0].key_prefix == env["MAHAVISHNU_KEY_PREFIX"]
    result = runner.invoke(app, ["mcp", "--http", "--no-auth"], env=env)
    assert result.exit_code == 0, result.output
    assert calls[1][1]["require_auth"] is False


@needs_redis
def test_inspect_decodes_delayed_dead_letters_sets_and_strings(
    runner: CliRunner, env: dict[str, str], settings: Settings
) -> None:
    keys = settings.keys
    task = TaskSpec(prompt="retry me", pool_id="p-1")
    fields = encode(TaskDelegate(task=task, attempt=2))
    due = time.time() + 60
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.zadd(keys.delayed, {pack({"pool": "p-1", "fields": fields}): due})
        client.xadd(keys.dlq, {"task": task.id, "reason": "bad", "raw": pack(fields)})
        client.sadd(keys.pools, "p-1", "p-2")
        client.set(keys.idempotency("k1"), task.id)
    finally:
        client.close()

    result = runner.invoke(app, ["inspect", "delayed", "--json"], env=env)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["key"], doc["type"], doc["kind"]) == (keys.delayed, "zset", "delayed")
    member = doc["members"][0]
    assert member["member"]["fields"]["body"]["task"]["prompt"] == "retry me"
    assert member["time"].startswith(time.strftime("%Y-", time.gmtime(due)))

    doc = json.loads(runner.invoke(app, ["inspect", keys.dlq, "--json"], env=env).stdout)
    raw = doc["entries"][0]["fields"]["raw"]
    assert raw["type"] == "TASK_DELEGATE"
    assert raw["body"]["task"]["id"] == task.id

    doc = json.loads(runner.invoke(app, ["inspect", "pools", "--json"], env=env).stdout)
    assert (doc["type"], doc["members"]) == ("set", ["p-1", "p-2"])
    doc = json.loads(runner.invoke(app, ["inspect", "idem:k1", "--json"], env=env).stdout)
    assert (doc["type"], doc["value"]) == ("string", task.id)

    human = runner.invoke(app, ["inspect", "delayed"], env=env)
    assert human.exit_code == 0 and "retry me" in human.stdout

    line = _one_line_error(runner.invoke(app, ["inspect", "no-such-key"], env=env))
    assert "no-such-key" in line


# ------------------------------------------------------------------------------ end to end


@needs_redis
async def test_spawned_pool_is_listed_by_the_next_call(
    orchestrator: Orchestrator, env: dict[str, str]
) -> None:
    spawned = await mhv_json(
        env, "pool", "spawn", "--type", "mahavishnu", "--name", "listed", "--label", "team=cli",
        "--worker-type", "shell", "--allow-command", "echo", "--max-workers", "3",
    )  # fmt: skip
    pool_id = spawned["pool_id"]
    assert spawned["status"] == "running"
    assert spawned["spec"]["pool_type"] == "local"
    assert spawned["spec"]["allowed_commands"] == ["echo"]

    listed = await mhv_json(env, "pool", "list")
    mine = [p for p in listed if p["spec"]["id"] == pool_id]
    assert mine and mine[0]["spec"]["labels"] == {"team": "cli"}

    code, out, err = await mhv(env, "pool", "list")
    assert code == 0 and pool_id in out and "listed" in out

    code, out, err = await mhv(env, "pool", "exec", pool_id, "--command", "--", "echo", "-n", "hi")
    assert (code, out) == (0, "hi\n"), err
    code, out, err = await mhv(
        env, "pool", "exec", pool_id, "--max-attempts", "1", "--command", "rm", "x"
    )
    assert code == 1 and "allowed_commands" in err

    assert (await mhv_json(env, "pool", "scale", pool_id, "2")) == {
        "pool_id": pool_id,
        "workers": 2,
    }
    code, _, err = await mhv(env, "pool", "scale", pool_id, "99")
    assert code == 1 and "outside" in err and len(err.splitlines()) == 1

    assert (await mhv_json(env, "pool", "close", pool_id))["status"] == "closed"
    assert [p for p in await mhv_json(env, "pool", "list") if p["spec"]["id"] == pool_id] == []


@needs_redis
async def test_pool_exec_prints_the_result(
    orchestrator: Orchestrator, client: PoolManager, env: dict[str, str]
) -> None:
    pool_id = await client.spawn_pool("local", name="exec", min_workers=1)

    code, out, err = await mhv(env, "pool", "exec", pool_id, "--prompt", "hello there")
    assert (code, out) == (0, "hello there\n")
    assert "completed" in err

    result = await mhv_json(
        env, "pool", "exec", pool_id, "--call", "add", "--arg", "2", "--arg", "3"
    )
    assert (result["status"], result["output"], result["pool_id"]) == ("completed", 5, pool_id)

    routed = await mhv_json(env, "pool", "route", "--call", "echo", "--kwarg", "a=[1, 2]")
    assert routed["output"] == {"a": [1, 2]}

    code, out, err = await mhv(
        env, "pool", "exec", pool_id, "--call", "fail", "--arg", "boom", "--max-attempts", "1"
    )
    assert code == 1
    assert "boom" in err and "Traceback" not in err

    status = await mhv_json(env, "task", "status", routed["task_id"])
    assert status["status"] == "completed"
    waited = await mhv_json(env, "task", "result", routed["task_id"], "--timeout", "5")
    assert waited["output"] == {"a": [1, 2]}

    health = await mhv_json(env, "pool", "health")
    assert health["healthy"] and health["pools"][pool_id]["live_workers"] >= 1
    load = await mhv_json(env, "pool", "monitor", pool_id)
    assert load[pool_id]["completed"] >= 3

    found = await mhv_json(env, "pool", "search", "hello")
    assert found["hits"][0]["output"] == "hello there"

    letters = await mhv_json(env, "task", "dead-letters")
    assert letters["total"] == 1 and "boom" in letters["entries"][0]["reason"]
    entry = letters["entries"][0]["entry_id"]
    requeued = await mhv_json(env, "task", "dead-letters", "--requeue", entry)
    assert requeued["requeued_task_id"]


@needs_redis
async def test_inspect_and_cancel_a_queued_task(
    orchestrator: Orchestrator, client: PoolManager, env: dict[str, str], settings: Settings
) -> None:
    pool_id = await client.spawn_pool("local", name="idle", min_workers=0)
    submitted = await mhv_json(
        env, "task", "submit", "--pool", pool_id, "--call", "echo", "--arg", "waiting"
    )
    task_id = submitted["task_id"]

    stream = await mhv_json(env, "inspect", f"pool:{{{pool_id}}}:tasks")
    assert (stream["type"], stream["kind"], stream["length"]) == ("stream", "pool_tasks", 1)
    entry = stream["entries"][0]["fields"]
    assert (entry["type"], entry["task"]) == ("TASK_DELEGATE", task_id)
    assert entry["body"]["task"]["args"] == ["waiting"]
    assert stream["groups"][0]["name"] == "workers"

    pool = await mhv_json(env, "inspect", settings.keys.pool(pool_id))
    assert pool["fields"]["spec"]["name"] == "idle"
    assert pool["fields"]["labels"] == {}

    cancelled = await mhv_json(env, "task", "cancel", task_id)
    assert cancelled == {
        "task_id": task_id,
        "previous_status": "queued",
        "status": "cancelled",
        "cancelled": True,
    }
    lookup = await mhv_json(env, "inspect", f"task:{task_id}")
    assert lookup["type"] == "hash" and lookup["ttl_s"] > 0
    assert lookup["fields"]["home"] == pool_id
    task = lookup["state"]  # the state, in the pool's slot, shown with the look-up
    assert task["key"] == settings.keys.pool_task(pool_id, task_id)
    assert task["kind"] == "pool_task" and task["ttl_s"] > 0
    assert task["fields"]["status"] == "cancelled"
    assert task["fields"]["result"]["status"] == "cancelled"

    code, out, _ = await mhv(env, "task", "cancel", task_id)
    assert code == 0 and "already cancelled" in out
    code, _, err = await mhv(env, "task", "result", task_id)
    assert code == 1 and "cancelled" in err


@needs_redis
async def test_route_without_an_eligible_pool_fails_clearly(
    orchestrator: Orchestrator, env: dict[str, str]
) -> None:
    code, _, err = await mhv(
        env, "pool", "route", "--prompt", "x", "--label", "gpu=true", "--queue-timeout", "0.3"
    )
    assert code == 1
    assert "not routed within 0.3s" in err


@needs_redis
async def test_worker_command_serves_a_pool_in_burst_mode(
    orchestrator: Orchestrator, client: PoolManager, env: dict[str, str]
) -> None:
    pool_id = await client.spawn_pool("local", name="burst", min_workers=0)
    task_id = await client.submit({"call": "add", "args": [20, 22]}, pool_id=pool_id)
    code, _, err = await mhv(env, "worker", "--pool", pool_id, "--burst", "--log-level", "ERROR")
    assert code == 0, err
    result = await client.result(task_id, timeout=5)
    assert (result.status, result.output) == ("completed", 42)


@needs_redis
async def test_orchestrator_command_serves_until_sigterm(
    env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator",
        "orchestrator",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
        cwd=tmp_path,
    )
    try:
        async with PoolManager(settings) as pools:
            pool_id = await pools.spawn_pool("local", name="served", min_workers=1, timeout=20)
            result = await pools.execute_on_pool(pool_id, {"prompt": "ping"}, timeout=10)
            assert result.output == "ping"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT)
    assert proc.returncode == 0, err.decode()


@needs_redis
async def test_up_demo_runs_a_batch_and_exits_zero(env: dict[str, str], tmp_path: Path) -> None:
    code, out, err = await mhv(env, "up", "--demo", "--tasks", "30", "--json", cwd=tmp_path)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["tasks"] == summary["completed"] == 30
    assert summary["failed"] == summary["dead_lettered"] == summary["wrong_output"] == 0
    assert summary["throughput_per_s"] > 0
    assert summary["latency_ms"]["p99"] >= summary["latency_ms"]["p50"] > 0
    assert summary["redis_url"] == load_settings(redis_url=REDIS_URL).redis_url_redacted
    assert list(summary["by_pool"]) == [summary["pool_id"]]
    assert await mhv_json(env, "pool", "list") == []


async def test_task_submit_warns_when_no_orchestrator_runs(env: dict[str, str]) -> None:
    code, out, err = await mhv(env, "task", "submit", "--call", "noop")
    assert code == 0 and out.strip().startswith("t-"), (out, err)
    assert "warning: no orchestrator is running; the task waits in the ingress" in err


async def test_pool_list_shows_external_workers_and_unsupervised_pools(
    env: dict[str, str], settings: Settings, tmp_path: Path, client: PoolManager
) -> None:
    orch = Orchestrator(settings, log_dir=tmp_path / "logs")
    running = asyncio.create_task(orch.run())
    await orch.wait_ready()
    pool_id = await client.spawn_pool("local", name="p", min_workers=1)
    extra = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "--pool", pool_id,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while "1/1 local + 1 external" not in (await mhv(env, "pool", "list"))[1]:
            assert time.monotonic() < deadline, "pool list never showed the external worker"
        orch.request_stop()
        await running
        deadline = time.monotonic() + 20
        while "unsupervised" not in (await mhv(env, "pool", "list"))[1]:
            assert time.monotonic() < deadline, "pool list never showed unsupervised"
    finally:
        orch.request_stop()
        await running
        if extra.returncode is None:
            extra.terminate()
        await asyncio.wait_for(extra.wait(), 30)
