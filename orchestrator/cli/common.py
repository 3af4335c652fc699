"""Plumbing of the `mahavishnu` command modules: option types, settings, one-line errors and
running async work from typer's plain functions."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from pydantic import ValidationError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestrator.cli import render
from shared.config import ENV_PREFIX, Settings, load_settings
from shared.errors import InvalidRequest, MahavishnuError, ResultTimeout
from shared.models import MAX_PROMPT_CHARS

if TYPE_CHECKING:
    from shared.client import PoolManager

P = ParamSpec("P")
T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout.")]
PromptOpt = Annotated[str | None, typer.Option(help="A prompt for the pool's executor.")]
PromptFileOpt = Annotated[
    str | None,
    typer.Option(
        "--prompt-file",
        metavar="PATH",
        help="Read the prompt from a UTF-8 file (`-` for stdin), for prompts too long to pass "
        "as an argument.",
    ),
]
CallOpt = Annotated[str | None, typer.Option(help="Name of a function the pool registers.")]
ArgOpt = Annotated[
    list[str] | None,
    typer.Option("--arg", help="Argument of --call as JSON (a bare word is a string). Repeatable."),
]
KwargOpt = Annotated[
    list[str] | None, typer.Option("--kwarg", help="NAME=JSON keyword argument of --call.")
]
CommandOpt = Annotated[
    bool, typer.Option("--command", help="Run ARGV (put `--` before options of the program).")
]
ArgvArg = Annotated[
    list[str] | None, typer.Argument(help="With --command: the program and its arguments.")
]
TimeoutOpt = Annotated[
    float | None, typer.Option(help="Task timeout in seconds (default from settings).")
]
QueueTimeoutOpt = Annotated[
    float | None, typer.Option(help="Seconds a task may wait for an eligible pool.")
]
AttemptsOpt = Annotated[int | None, typer.Option(help="Deliveries before dead-lettering.")]
IdemOpt = Annotated[str | None, typer.Option(help="Re-submitting the same key returns one task.")]
TagOpt = Annotated[list[str] | None, typer.Option("--tag", help="Tag for the memory record.")]
LabelOpt = Annotated[list[str] | None, typer.Option("--label", help="Required pool label k=v.")]
StrategyOpt = Annotated[
    str | None, typer.Option(help="round_robin, least_loaded, random or affinity.")
]
AffinityOpt = Annotated[str | None, typer.Option(help="Same key, same pool (with affinity).")]
FollowOpt = Annotated[
    bool,
    typer.Option(
        "--follow",
        "-f",
        help="Stream the task's output and steps as they come (with --json: JSON Lines).",
    ),
]


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one `error: ...` line on stderr and exit with `code`."""
    line = " ".join(str(message).split())
    print(f"error: {line}", file=sys.stderr)
    raise typer.Exit(code)


def read_prompt(prompt: str | None, prompt_file: str | None) -> str | None:
    """The prompt of --prompt or --prompt-file (`-` reads stdin); InvalidRequest names the
    option, the file and what is wrong with it."""
    if prompt_file is None:
        if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidRequest(f"--prompt: {_too_long(f'{len(prompt):,} characters')}")
        return prompt
    if prompt is not None:
        raise InvalidRequest("give either --prompt or --prompt-file, not both")
    name = "stdin" if prompt_file == "-" else repr(prompt_file)
    most = MAX_PROMPT_CHARS * 4  # UTF-8 takes at most 4 bytes a character
    try:
        if prompt_file == "-":
            raw = sys.stdin.buffer.read(most + 1)
        else:
            with open(prompt_file, "rb") as file:
                raw = file.read(most + 1)
    except OSError as exc:
        raise InvalidRequest(
            f"--prompt-file {name} cannot be read: {exc.strerror or exc}"
        ) from None
    if len(raw) > most:
        raise InvalidRequest(f"--prompt-file {name}: {_too_long(f'more than {most:,} bytes')}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"--prompt-file {name} is not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start} cannot be decoded"
        ) from None
    if not text:
        raise InvalidRequest(f"--prompt-file {name} is empty")
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"--prompt-file {name}: {_too_long(f'{len(text):,} characters')}")
    return text


def _too_long(size: str) -> str:
    return (
        f"the prompt has {size}; a task's prompt may have at most {MAX_PROMPT_CHARS:,} characters"
    )


def cli_settings() -> Settings:
    """The settings, or exit with the one-line ConfigError (the Redis password masked)."""
    try:
        return load_settings()
    except MahavishnuError as exc:
        fail(render.mask_secrets(str(exc), os.environ.get(f"{ENV_PREFIX}REDIS_URL", "")))


def scrub(message: str, settings: Settings | None) -> str:
    if settings is None:
        return message
    message = message.replace(settings.redis_url, settings.redis_url_redacted)
    return render.mask_secrets(message, settings.redis_url)


def guard(settings: Settings | None, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `fn`, turning every deliberate error into one line on stderr and exit code 1."""
    try:
        return fn(*args, **kwargs)
    except ResultTimeout as exc:
        fail(f"{exc}; it goes on: `mahavishnu task result {exc.task_id}` waits for it")
    except MahavishnuError as exc:
        fail(scrub(str(exc), settings))
    except ValidationError as exc:
        from shared.codec import describe_validation_error

        fail(f"invalid value: {describe_validation_error(exc)}")
    except RedisError as exc:
        if settings is not None and isinstance(exc, RedisTimeoutError):
            from shared.connection import unresponsive

            fail(str(unresponsive(settings)))
        where = settings.redis_url_redacted if settings else "the configured URL"
        fail(scrub(f"Redis at {where}: {type(exc).__name__}: {exc}", settings))
    except OSError as exc:
        fail(scrub(f"{type(exc).__name__}: {exc}", settings))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise typer.Exit(130) from None


def run_async(
    settings: Settings, fn: Callable[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
) -> T:
    """`asyncio.run(fn(*args))` inside `guard`."""
    return guard(settings, lambda: asyncio.run(fn(*args, **kwargs)))


def client(settings: Settings) -> PoolManager:
    from shared.client import PoolManager

    return PoolManager(settings)


def setup_logging(level: str, settings: Settings | None = None) -> None:
    """Log to stderr at `level`, in the settings' `log_format` (text without settings)."""
    from shared.logs import configure_logging, register_settings_secrets

    if settings is not None:
        register_settings_secrets(settings)
    try:
        configure_logging(level, "text" if settings is None else settings.log_format)
    except ValueError:
        fail(f"--log-level {level!r}: use DEBUG, INFO, WARNING or ERROR")


MetricsPortOpt = Annotated[
    int | None,
    typer.Option(
        min=0, max=65535, help="Serve /metrics on this port (0: off; default: metrics_port)."
    ),
]


def with_metrics_port(settings: Settings, port: int | None) -> Settings:
    """The settings with `--metrics-port`, when given, as their `metrics_port`."""
    return settings if port is None else settings.model_copy(update={"metrics_port": port})
