"""The options of an `arq` pool (README.md, "arq pools"): which arq function its tasks run, on
which arq Redis and queue, and how arq's outcomes count for us.

They travel in `PoolSpec.options` (the type-specific options every pool has), are checked when
the spec is validated (`PoolSpec` calls `arq_options`), and are stored with their defaults
filled in. The arq Redis is named by a URL without a password: the spec is stored in our Redis
and shown by `pool list --json`, so a password comes from an environment variable of the
orchestrator (`password_env`), which its bridge workers inherit.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ARQ_DEFAULT_QUEUE = "arq:queue"  # arq.constants.default_queue_name
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_EXAMPLE = "e.g. options={'function': 'resize_image', 'redis_url': 'redis://10.0.0.7:6379/0'}"


class ArqOptions(BaseModel):
    """An arq pool's options (`PoolSpec.options` of a pool of type `arq`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    function: str = Field(
        description="the arq function a prompt task calls with the prompt as its one argument "
        "(the name the arq worker registers it under)"
    )
    functions: list[str] = Field(
        default_factory=list,
        max_length=256,
        description="more arq function names a `call` task may name (`function` always may)",
    )
    redis_url: str = Field(description="the arq Redis: redis://host:port/db or rediss://...")
    password_env: str | None = Field(
        default=None, description="an environment variable holding the arq Redis password"
    )
    queue: str = Field(default=ARQ_DEFAULT_QUEUE, min_length=1, max_length=256)
    on_job_timeout: Literal["retry", "fail"] = Field(
        default="retry",
        description="an arq job that hits the arq worker's job_timeout: a failed attempt that "
        "is retried like any other (retry), or failed at once (fail)",
    )
    poll_interval: float = Field(
        default=0.05, ge=0.01, le=5.0, description="seconds between looks at arq's results"
    )

    @field_validator("function")
    @classmethod
    def _function_is_a_name(cls, value: str) -> str:
        return _check_name(value)

    @field_validator("functions")
    @classmethod
    def _functions_are_names(cls, value: list[str]) -> list[str]:
        return [_check_name(v) for v in value]

    @field_validator("password_env")
    @classmethod
    def _env_is_a_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_RE.match(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @field_validator("redis_url")
    @classmethod
    def _url_is_usable(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 -- parsing the port is the check
        except ValueError as exc:
            raise ValueError(f"is malformed ({exc}); use e.g. redis://10.0.0.7:6379/0") from None
        if parts.scheme not in {"redis", "rediss"}:
            raise ValueError("must start with redis:// or rediss:// (arq takes no cluster URL)")
        if not parts.hostname:
            raise ValueError("names no host; use e.g. redis://10.0.0.7:6379/0")
        if parts.password is not None:
            raise ValueError(
                "must not hold a password: the pool's options are stored in Redis and shown "
                "by `pool list --json`; put the password in an environment variable of the "
                "orchestrator and name it with password_env"
            )
        database = parts.path.strip("/")
        if database and not database.isdigit():
            raise ValueError(f"names database {database!r}; use a number, e.g. /0")
        return value

    @property
    def names(self) -> list[str]:
        """Every arq function a task of this pool may run, sorted."""
        return sorted({self.function, *self.functions})

    @property
    def where(self) -> str:
        """The queue and the Redis it is on, for `pool list` (no secret in it)."""
        parts = urlsplit(self.redis_url)
        database = parts.path.strip("/") or "0"
        return f"{self.queue} @ {parts.hostname}:{parts.port or 6379}/{database}"


def _check_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not an arq function name: 1-128 letters, digits, '_', '.', ':' or '-', "
            "starting with a letter or '_'"
        )
    return value


def arq_options(pool_name: str, options: dict[str, Any]) -> ArqOptions:
    """Validate an arq pool's options; ValueError naming the pool, the option and the fix."""
    try:
        return ArqOptions.model_validate(options)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ())) or "options"
            message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            if err.get("type") == "missing":
                problems.append(
                    f"option {where} is required ({ArqOptions.model_fields[where].description})"
                )
            elif err.get("type") == "extra_forbidden":
                known = ", ".join(ArqOptions.model_fields)
                problems.append(f"unknown option {where!r}; arq pools take: {known}")
            elif where == "redis_url":  # its value is not echoed: it may hold a password
                problems.append(f"option redis_url {message}")
            else:
                problems.append(f"option {where}={err.get('input')!r}: {message}")
        problem = f"arq pool {pool_name!r}: " + "; ".join(problems) + f" ({_EXAMPLE})"
        raise ValueError(problem) from None
