"""`--prompt-file PATH` (and `-` for stdin) on every command that takes `--prompt`: prompts too
long for the command line, checked against the task's prompt limit before anything is sent."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from shared.client import PoolManager
from shared.models import MAX_PROMPT_CHARS

REPO_ROOT = Path(__file__).resolve().parent.parent
TEN_MB = 10 * 1024 * 1024
COMMANDS = [["pool", "exec", "p-1"], ["pool", "route"], ["task", "submit"]]


def one_line_error(result: Any) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return str(lines[0])


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def no_redis_env(tmp_path: Path) -> dict[str, str]:
    """Settings pointing at a port nothing listens on: these errors come before any Redis call."""
    return {
        "MAHAVISHNU_REDIS_URL": "redis://127.0.0.1:1/0",
        "MAHAVISHNU_SETTINGS_DIR": str(tmp_path / "no-settings"),
    }


@pytest.mark.parametrize("command", COMMANDS)
def test_every_prompt_command_takes_prompt_file(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--prompt-file" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_prompt_and_prompt_file_together_name_both(
    runner: CliRunner, no_redis_env: dict[str, str], tmp_path: Path, command: list[str]
) -> None:
    path = tmp_path / "p.txt"
    path.write_text("hello")
    args = [*command, "--prompt", "x", "--prompt-file", str(path)]
    line = one_line_error(runner.invoke(app, args, env=no_redis_env))
    assert line == "error: give either --prompt or --prompt-file, not both"


def test_missing_unreadable_empty_and_non_utf8_files_are_named(
    runner: CliRunner, no_redis_env: dict[str, str], tmp_path: Path
) -> None:
    def error(path: Path) -> str:
        args = ["task", "submit", "--prompt-file", str(path)]
        return one_line_error(runner.invoke(app, args, env=no_redis_env))

    missing = tmp_path / "missing.txt"
    assert (
        error(missing)
        == f"error: --prompt-file '{missing}' cannot be read: No such file or directory"
    )
    assert error(tmp_path) == f"error: --prompt-file '{tmp_path}' cannot be read: Is a directory"
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert error(empty) == f"error: --prompt-file '{empty}' is empty"
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café au lait".encode("latin-1"))
    assert error(latin1) == (
        f"error: --prompt-file '{latin1}' is not UTF-8 text: byte 0xe9 at offset 3 cannot be decoded"
    )


def test_a_prompt_over_the_limit_says_the_limit(
    runner: CliRunner, no_redis_env: dict[str, str], tmp_path: Path
) -> None:
    assert MAX_PROMPT_CHARS == 1_000_000
    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * (MAX_PROMPT_CHARS + 1))
    line = one_line_error(
        runner.invoke(app, ["pool", "route", "--prompt-file", str(big)], env=no_redis_env)
    )
    assert line == (
        f"error: --prompt-file '{big}': the prompt has 1,000,001 characters; "
        "a task's prompt may have at most 1,000,000 characters"
    )
    # multi-byte characters count as one each: 1,000,000 of them (2 MB) are within the limit
    # (the error is then the missing Redis, after the prompt was accepted)
    wide = tmp_path / "wide.txt"
    wide.write_text("é" * MAX_PROMPT_CHARS, encoding="utf-8")
    line = one_line_error(
        runner.invoke(app, ["task", "submit", "--prompt-file", str(wide)], env=no_redis_env)
    )
    assert "prompt" not in line and "127.0.0.1:1" in line
    line = one_line_error(
        runner.invoke(
            app, ["task", "submit", "--prompt-file", "-"], input="b" * TEN_MB, env=no_redis_env
        )
    )
    assert line == (
        "error: --prompt-file stdin: the prompt has more than 4,000,000 bytes; "
        "a task's prompt may have at most 1,000,000 characters"
    )
    args = ["task", "submit", "--prompt", "c" * (MAX_PROMPT_CHARS + 5)]
    inline = runner.invoke(app, args, env=no_redis_env)
    assert "--prompt: the prompt has 1,000,005 characters" in one_line_error(inline)


async def mhv(*args: str, stdin: bytes | None = None) -> tuple[int, bytes, str]:
    """Run the CLI as a subprocess with this test's settings (the `settings` fixture exported
    them to the environment); return (exit code, stdout bytes, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        cwd=REPO_ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 120)
    assert proc.returncode is not None
    return proc.returncode, out, err.decode()


async def test_a_10_mb_prompt_file_is_refused_with_the_limit_and_the_largest_one_runs(
    orchestrator: Any, manager: PoolManager, tmp_path: Path
) -> None:
    pool_id = await manager.spawn_pool("local", name="prompts", min_workers=1)

    ten_mb = tmp_path / "ten-mb.txt"
    ten_mb.write_bytes(b"x" * TEN_MB)
    code, out, err = await mhv("pool", "exec", pool_id, "--prompt-file", str(ten_mb))
    assert (code, out) == (1, b"")
    assert err.splitlines() == [
        f"error: --prompt-file '{ten_mb}': the prompt has more than 4,000,000 bytes; "
        "a task's prompt may have at most 1,000,000 characters"
    ]
    assert await manager.redis.xlen(manager.keys.pool_tasks(pool_id)) == 0  # nothing queued

    # the largest prompt a task may carry, through the pool's default function (echo)
    largest = "".join(f"line {i:07d}\n" for i in range(MAX_PROMPT_CHARS // 13))
    largest += "z" * (MAX_PROMPT_CHARS - len(largest))
    assert len(largest) == MAX_PROMPT_CHARS
    path = tmp_path / "largest.txt"
    path.write_text(largest, encoding="utf-8")
    code, out, err = await mhv("pool", "exec", pool_id, "--prompt-file", str(path))
    assert code == 0, err
    assert out.decode() == largest + "\n"

    # from stdin, queued without waiting, then its result
    code, out, err = await mhv(
        "task", "submit", "--pool", pool_id, "--prompt-file", "-", stdin=b"from stdin \xe2\x9c\x93"
    )
    assert code == 0, err
    result = await manager.result(out.decode().strip(), timeout=30)
    assert (result.status, result.output) == ("completed", "from stdin \u2713")
