"""The `pool spawn` options of an arq pool (`--arq-function`, `--arq-redis-url`, ...).

They are the keys of the pool's `options` that `shared.arq_options.ArqOptions` validates, laid
over the `--options` JSON object (which carries any other pool type's options, e.g.
`{"kubernetes": {...}}`); given for a pool of another type, they are an error.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from orchestrator.cli import render
from shared.errors import InvalidRequest
from shared.models import PoolType

ArqFunctionOpt = Annotated[
    str | None, typer.Option(help="arq pools: the arq function prompt tasks call.")
]
ArqAllowOpt = Annotated[
    list[str] | None,
    typer.Option(help="arq pools: another arq function call tasks may name. Repeatable."),
]
ArqRedisUrlOpt = Annotated[
    str | None, typer.Option(help="arq pools: the arq Redis (redis://host:port/db).")
]
ArqPasswordEnvOpt = Annotated[
    str | None, typer.Option(help="arq pools: env variable holding the arq Redis password.")
]
ArqQueueOpt = Annotated[
    str | None, typer.Option(help="arq pools: the arq queue (default arq:queue).")
]
ArqOnJobTimeoutOpt = Annotated[
    str | None, typer.Option(help="arq pools: an arq job timeout is retried or failed.")
]


def arq_options(
    function: str | None,
    functions: list[str] | None,
    redis_url: str | None,
    password_env: str | None,
    queue: str | None,
    on_job_timeout: str | None,
) -> dict[str, Any] | None:
    """The arq options given (by their `options` keys); None when none was given."""
    given = {
        "function": function,
        "functions": functions,
        "redis_url": redis_url,
        "password_env": password_env,
        "queue": queue,
        "on_job_timeout": on_job_timeout,
    }
    return {k: v for k, v in given.items() if v is not None} or None


def pool_options(options: str | None, arq: dict[str, Any] | None) -> dict[str, Any] | None:
    """A pool spec's `options`: the `--options` JSON object with the arq options over it."""
    return {**(render.json_object(options, "--options") or {}), **(arq or {})} or None


_FLAGS = {"functions": "--arq-allow"}
"""The flags whose names are not `--arq-` + their `options` key."""


def check_pool_type(arq: dict[str, Any] | None, pool_type: PoolType) -> None:
    """InvalidRequest naming the arq options given for a pool that is not an arq pool."""
    if arq and pool_type is not PoolType.ARQ:
        given = ", ".join(_FLAGS.get(k, f"--arq-{k.replace('_', '-')}") for k in arq)
        raise InvalidRequest(f"{given}: only for pools of --type arq")
