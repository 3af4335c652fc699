"""Log lines an operator (and a log pipeline) can read: text, key=value or JSON (`log_format`).

Every line about a task carries `task`, `pool` and `worker`: a log call passes them with
`extra=task_fields(...)`, a worker binds its `pool` and `worker` for the whole process
(`bind`), and code running inside a task's own asyncio task gets its `task` from `in_task`.
No secret reaches a line: credentials in URLs, bearer tokens, `password=`/`token=` values and
every value registered with `add_secret` (the MCP token, the Redis password) are replaced by
`***` in the finished line, whatever part of the record they came from.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

CONTEXT_FIELDS = ("task", "pool", "worker", "attempt", "orchestrator")
"""Fields a line carries when known, in this order, after time, level, logger and message."""

TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

_bound: dict[str, str] = {}
_task: contextvars.ContextVar[str | None] = contextvars.ContextVar("mahavishnu_task", default=None)
_secrets: set[str] = set()

_URL_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s\"']*):[^@/\s\"']+@")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_ASSIGNED = re.compile(r"(?i)\b(password|passwd|token|secret|api_key)(\s*[=:]\s*)[^\s,;\"'&]+")


def bind(**fields: str) -> None:
    """Context for every later line of this process (a worker's `pool` and `worker`)."""
    _bound.update({k: v for k, v in fields.items() if v})


def task_fields(task: str, pool: str | None = None, worker: str | None = None) -> dict[str, str]:
    """`extra=` for a line about one task."""
    fields = {"task": task}
    if pool:
        fields["pool"] = pool
    if worker:
        fields["worker"] = worker
    return fields


@contextmanager
def in_task(task_id: str) -> Iterator[None]:
    """Lines logged inside (in this asyncio task) carry `task`."""
    token = _task.set(task_id)
    try:
        yield
    finally:
        _task.reset(token)


def set_task(task_id: str) -> None:
    """Lines logged from now on in this asyncio task (its own copy of the context) carry
    `task`: for a coroutine that runs one task to its end (cheaper than `in_task`)."""
    _task.set(task_id)


def add_secret(value: str | None) -> None:
    """Never print `value` (at least 4 characters), nor its JSON-escaped form."""
    if value and len(value) >= 4:
        _secrets.add(value)
        _secrets.add(json.dumps(value)[1:-1])


def redact(line: str) -> str:
    """`line` with credentials and registered secrets replaced by `***`."""
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in line:
            line = line.replace(secret, "***")
    line = _URL_CREDENTIALS.sub(r"\g<head>:***@", line)
    line = _BEARER.sub(r"\g<1>***", line)
    return _ASSIGNED.sub(r"\g<1>\g<2>***", line)


def context_of(record: logging.LogRecord) -> dict[str, str]:
    """The context fields of a record: its `extra`, else the task it runs in, else bound."""
    fields: dict[str, str] = {}
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is None and name == "task":
            value = _task.get()
        if value is None:
            value = _bound.get(name)
        if value is not None and value != "":
            fields[name] = str(value)
    return fields


def _iso(created: float) -> str:
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _message(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    message = record.getMessage()
    if record.exc_info:
        message += "\n" + formatter.formatException(record.exc_info)
    if record.stack_info:
        message += "\n" + formatter.formatStack(record.stack_info)
    return message


class TextFormatter(logging.Formatter):
    """The classic line, with the context appended as key=value."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = context_of(record)
        if context:
            line += " " + " ".join(f"{k}={_kv_value(v)}" for k, v in context.items())
        return redact(line)


def _kv_value(value: str) -> str:
    if value and not any(c in value for c in ' "=\n\t\\'):
        return value
    return json.dumps(value, ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    """`time=... level=... logger=... msg="..." task=... pool=... worker=...` (logfmt)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _message(self, record),
            **context_of(record),
        }
        return redact(" ".join(f"{k}={_kv_value(v)}" for k, v in fields.items()))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg and the context fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **context_of(record),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(doc, ensure_ascii=False, default=str))


FORMATTERS: dict[str, type[logging.Formatter]] = {
    "text": TextFormatter,
    "kv": KeyValueFormatter,
    "json": JsonFormatter,
}


def configure_logging(level: str | int, log_format: str, stream: IO[str] | None = None) -> None:
    """Log to `stream` (stderr) at `level` in `log_format`, replacing earlier handlers.

    Raises ValueError for an unknown level or format.
    """
    if log_format not in FORMATTERS:
        raise ValueError(f"unknown log format {log_format!r}: use text, kv or json")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(FORMATTERS[log_format]())
    logging.basicConfig(
        level=level.upper() if isinstance(level, str) else level, handlers=[handler], force=True
    )


def register_settings_secrets(settings: Any) -> None:
    """Register the secrets of a Settings object: the MCP token and the Redis password."""
    token = getattr(settings, "mcp_http_token", None)
    if token is not None:
        add_secret(token.get_secret_value())
    url = str(getattr(settings, "redis_url", ""))
    match = re.search(r"://[^:/@\s]*:([^@/\s]+)@", url)
    if match:
        add_secret(match.group(1))
