"""What the unit tests (no Redis) of the supervisor, reclaim, records and readers share: a fake
Redis and its pipeline, stream entries as Redis gives them back, and fixtures (offline settings,
recorders standing in for `finalize_results` and `announce_stored`) that a test module uses by
binding them to a name of its own (`finalized = unit_fakes.finalized`).

The fake answers only COMMANDS, with the replies a test gives it, shaped as redis-py 8 gives them
over RESP2 with `decode_responses=False`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import orchestrator.records as records_module
from shared.codec import StreamFields
from shared.config import Settings, load_settings
from shared.finals import FinalResult
from shared.scripts import Scripts

SCRIPT_NAMES = {script.sha: name for name, script in Scripts(None).library.items()}
Call = tuple[str, tuple[Any, ...], dict[str, Any]]
Finalized = list[tuple[list[FinalResult], dict[str, Any]]]
COMMANDS = frozenset(
    {
        "delete",
        "evalsha",
        "execute_command",
        "exists",
        "expire",
        "get",
        "hget",
        "hgetall",
        "hincrby",
        "hmget",
        "hset",
        "pexpire",
        "script_load",
        "smembers",
        "srem",
        "xack",
        "xadd",
        "xclaim",
        "xdel",
        "xgroup_delconsumer",
        "xlen",
        "xpending",
        "xpending_range",
        "xrange",
        "zadd",
        "zrangebyscore",
        "zrem",
    }
)
"""The commands the supervisor, the reclaimer and Records send, directly or on pipelines."""


class FakeRedis:
    """Answers each command from `answers` (a reply, or a function of the command's arguments;
    None when absent) and logs it, script calls under the script's name as (keys, args); an
    Exception answer is raised (or, in a pipeline run with `raise_on_error=False`, returned in
    its place)."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.log: list[Call] = []
        self.unreachable: Exception | None = None  # raised by every pipeline's execute

    def answer(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if name in ("execute_command", "evalsha"):
            rest = args[1:] if name == "execute_command" else args  # drop "EVALSHA"
            sha, count, params = rest[0], int(rest[1]), rest[2:]
            name, args, kwargs = SCRIPT_NAMES[sha], (list(params[:count]), list(params[count:])), {}
        self.log.append((name, args, kwargs))
        found = self.answers.get(name)
        return found(*args, **kwargs) if callable(found) else found

    def calls(self, name: str) -> list[Call]:
        return [c for c in self.log if c[0] == name]

    def pipeline(self, transaction: bool = False) -> FakePipeline:
        return FakePipeline(self)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name not in COMMANDS:
            raise AttributeError(name)

        async def command(*args: Any, **kwargs: Any) -> Any:
            reply = self.answer(name, args, kwargs)
            if isinstance(reply, Exception):
                raise reply
            return reply

        return command


class FakePipeline:
    """Queues commands; `execute` answers them in order from its FakeRedis."""

    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.command_stack: list[Call] = []

    def __len__(self) -> int:
        return len(self.command_stack)

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name not in COMMANDS:
            raise AttributeError(name)

        def queue(*args: Any, **kwargs: Any) -> None:
            self.command_stack.append((name, args, kwargs))

        return queue

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack, self.command_stack = self.command_stack, []
        if self.redis.unreachable is not None:
            raise self.redis.unreachable
        replies = [self.redis.answer(name, args, kwargs) for name, args, kwargs in stack]
        errors = [r for r in replies if isinstance(r, Exception)]
        if errors and raise_on_error:
            raise errors[0]
        return replies


def as_reply(fields: StreamFields) -> dict[bytes, bytes]:
    """Entry fields as Redis gives them back: every name and value as bytes."""
    return {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}


@pytest.fixture
def offline_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings from defaults only (no YAML), under a prefix of their own; nothing connects."""
    monkeypatch.setenv("MAHAVISHNU_SETTINGS_DIR", str(tmp_path / "no-settings"))
    return load_settings(key_prefix="unit:", redis_url="redis://127.0.0.1:1/0")


class FinalsRecorder:
    """Stands in for `finalize_results` (which is not run): keeps each call's final results, in
    `finals` alone and in `calls` with the call's keyword arguments, and says all were written."""

    def __init__(self) -> None:
        self.finals: list[list[FinalResult]] = []
        self.calls: Finalized = []

    async def __call__(
        self, redis: Any, scripts: Any, settings: Any, finals: Any, **kw: Any
    ) -> list[bool]:
        self.finals.append(list(finals))
        self.calls.append((list(finals), kw))
        return [True] * len(finals)


def record_finals(monkeypatch: pytest.MonkeyPatch) -> FinalsRecorder:
    """Replace `finalize_results` where Records calls it by a FinalsRecorder."""
    recorder = FinalsRecorder()
    monkeypatch.setattr(records_module, "finalize_results", recorder)
    return recorder


@pytest.fixture
def finalized(monkeypatch: pytest.MonkeyPatch) -> list[list[FinalResult]]:
    """The final results `Records.fail` hands to `finalize_results` (which is not run)."""
    return record_finals(monkeypatch).finals


def announced_in(module: ModuleType) -> Any:
    """An `announced` fixture for the tests of `module`: the (home, task id) lists `module` asks
    `announce_stored` to announce (which it then does not)."""

    @pytest.fixture
    def announced(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[str, str]]]:
        seen: list[list[tuple[str, str]]] = []

        async def record(redis: Any, scripts: Any, settings: Any, tasks: Any, **kw: Any) -> None:
            seen.append(list(tasks))

        monkeypatch.setattr(module, "announce_stored", record)
        return seen

    return announced
