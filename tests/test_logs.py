"""Structured log lines: the three formats, the task context, and no secret ever printed."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from shared.config import load_settings
from shared.logs import (
    add_secret,
    bind,
    configure_logging,
    in_task,
    register_settings_secrets,
    task_fields,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


def test_json_lines_carry_the_task_fields(captured: io.StringIO) -> None:
    configure_logging("INFO", "json", captured)
    log = logging.getLogger("mahavishnu.test")
    log.warning("task t-1 failed: %s", "boom", extra=task_fields("t-1", "p-1", "w-1"))
    log.info("no task here")
    first, second = (json.loads(line) for line in lines(captured))
    assert first["task"] == "t-1" and first["pool"] == "p-1" and first["worker"] == "w-1"
    assert first["msg"] == "task t-1 failed: boom" and first["level"] == "warning"
    assert first["logger"] == "mahavishnu.test" and first["time"].endswith("Z")
    assert "task" not in second


async def test_bound_and_task_context(
    captured: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shared.logs

    monkeypatch.setattr(shared.logs, "_bound", {})
    configure_logging("INFO", "kv", captured)
    bind(pool="p-9", worker="w-9")
    log = logging.getLogger("mahavishnu.test")

    async def run() -> None:
        with in_task("t-7"):
            log.info("inside the task's code")

    await asyncio.create_task(run())
    log.info("outside")
    inside, outside = lines(captured)
    assert inside.endswith('msg="inside the task\'s code" task=t-7 pool=p-9 worker=w-9')
    assert outside.endswith("msg=outside pool=p-9 worker=w-9")
    assert inside.startswith("time=") and " level=info logger=mahavishnu.test " in inside


@pytest.mark.parametrize("log_format", ["text", "kv", "json"])
def test_no_secret_is_printed(captured: io.StringIO, log_format: str) -> None:
    settings = load_settings(
        redis_url="redis://app:Redis-Pa55word@db.example:6379/0",
        mcp_http_token="tok-EXAMPLE-0123456789abcdef",
    )
    register_settings_secrets(settings)
    configure_logging("INFO", log_format, captured)
    log = logging.getLogger("mahavishnu.test")
    log.info("connecting to %s", settings.redis_url)
    log.info("header Authorization: Bearer tok-EXAMPLE-0123456789abcdef")
    log.info("settings %s", {"mcp_http_token": "tok-EXAMPLE-0123456789abcdef"})
    log.info("other url rediss://:Pw-only-99@h:1 and password=hunter22 token=abc.def")
    try:
        raise RuntimeError(f"cannot reach {settings.redis_url}")
    except RuntimeError:
        log.exception("failed")
    out = captured.getvalue()
    for secret in ("Redis-Pa55word", "tok-EXAMPLE-0123456789abcdef", "Pw-only-99", "hunter22"):
        assert secret not in out, (secret, out)
    assert "abc.def" not in out
    assert "redis://app:***@db.example:6379/0" in out
    if log_format == "json":
        for line in lines(captured):
            json.loads(line)


def test_a_json_escaped_secret_is_caught(captured: io.StringIO) -> None:
    add_secret('quote"and\\slash')
    configure_logging("INFO", "json", captured)
    logging.getLogger("mahavishnu.test").info('value quote"and\\slash here')
    assert "quote" not in captured.getvalue()


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format 'xml': use text, kv or json"):
        configure_logging("INFO", "xml")
