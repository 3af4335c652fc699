"""arq pool options and the checks the bridge makes before any job: each bad input is refused
with the pool, the option and the fix named (no Redis, no arq needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from orchestrator.cli.render import pool_kind
from orchestrator.pools.arq import ArqBackend
from shared.client import make_pool_spec
from shared.config import Settings
from shared.errors import InvalidRequest
from shared.models import PoolSpec, TaskSpec
from worker.arq_executor import ArqExecutor

pytestmark = pytest.mark.unit  # needs no Redis: `make test-unit`

URL = "redis://10.0.0.7:6380/2"


def spec(**options: object) -> PoolSpec:
    return make_pool_spec("arq", None, name="team", options=options)


def refusal(**options: object) -> str:
    with pytest.raises(InvalidRequest) as refused:
        spec(**options)
    return str(refused.value)


def test_options_are_stored_with_their_defaults() -> None:
    made = spec(function="resize", redis_url=URL)
    assert made.options == {
        "function": "resize",
        "functions": [],
        "redis_url": URL,
        "password_env": None,
        "queue": "arq:queue",
        "on_job_timeout": "retry",
        "poll_interval": 0.05,
    }
    assert pool_kind(made) == "arq/python\narq:queue @ 10.0.0.7:6380/2"
    again = PoolSpec.model_validate_json(made.model_dump_json())  # as a worker reads it
    assert again.options == made.options


def test_missing_and_unknown_options_are_named() -> None:
    message = refusal(queu="jobs")
    assert message.startswith("invalid pool spec: arq pool 'team': option function is required")
    assert "option function is required (the arq function a prompt task calls" in message
    assert "option redis_url is required (the arq Redis: redis://host:port/db" in message
    assert "unknown option 'queu'; arq pools take: function, functions, redis_url" in message
    assert "e.g. options={'function': 'resize_image'" in message


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://:s3cret@10.0.0.7/0", "must not hold a password"),
        ("redis+cluster://10.0.0.7:7000", "must start with redis:// or rediss://"),
        ("http://10.0.0.7", "must start with redis:// or rediss://"),
        ("redis://10.0.0.7:port/0", "is malformed"),
        ("redis:///0", "names no host"),
        ("redis://10.0.0.7/zero", "names database 'zero'"),
    ],
)
def test_a_bad_arq_redis_url_is_refused(url: str, problem: str) -> None:
    message = refusal(function="f", redis_url=url)
    assert f"option redis_url {problem}" in message
    assert "s3cret" not in message


def test_bad_names_timeouts_and_worker_types_are_refused() -> None:
    assert "option function='no spaces': 'no spaces' is not an arq function name" in refusal(
        function="no spaces", redis_url=URL
    )
    assert "'-x' is not an arq function name" in refusal(
        function="f", functions=["-x"], redis_url=URL
    )
    assert "option on_job_timeout='maybe': Input should be 'retry' or 'fail'" in refusal(
        function="f", redis_url=URL, on_job_timeout="maybe"
    )
    assert "'1X' is not an environment variable name" in refusal(
        function="f", redis_url=URL, password_env="1X"
    )
    with pytest.raises(InvalidRequest, match="arq pool 'team': worker_type must be 'python'"):
        make_pool_spec(
            "arq", None, name="team", worker_type="shell", allowed_commands=["ls"],
            options={"function": "f", "redis_url": URL},
        )  # fmt: skip


def test_a_missing_arq_venv_fails_the_spawn_saying_how_to_make_one(tmp_path: Path) -> None:
    settings = Settings(arq_python=tmp_path / "nowhere" / "python")
    backend = ArqBackend(settings, tmp_path / "logs")
    problem = backend.problem(spec(function="f", redis_url=URL))
    assert problem.startswith("arq pool 'team': arq pools need arq's own virtual environment")
    assert f"no python at {tmp_path / 'nowhere' / 'python'}: run `make arq-venv`" in problem


async def test_tasks_the_bridge_cannot_send_fail_at_once_without_retries() -> None:
    settings = Settings(arq_python=Path(sys.executable))  # never started: each is refused first
    made = spec(function="shout", functions=["add"], redis_url=URL)
    executor = ArqExecutor(made, settings)
    unknown = await executor.run(TaskSpec(call="drop_tables"))
    assert unknown.error == (
        f"arq pool 'team' ({made.id}) has no arq function 'drop_tables'; it runs: add, shout"
    )
    reserved = await executor.run(TaskSpec(call="add", kwargs={"_job_id": "x"}))
    assert reserved.error == "kwargs _job_id: names starting with '_' are arq's own options"
    binary = await executor.run(TaskSpec(call="add", args=[b"\x00"]))
    assert str(binary.error).startswith("arq jobs take JSON arguments")
    wrong = await executor.run(TaskSpec(command=["ls"]))
    assert wrong.error == "a python pool runs 'call' and 'prompt' tasks, not command tasks"
    assert not any(o.retryable for o in (unknown, reserved, binary, wrong))
    assert not executor.alive
    await executor.aclose()
