"""The readable task fields: ISO 8601 times and the output's head (shared/task_state.py)."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.task_state import OUTPUT_HEAD_CHARS, iso_time, output_head

pytestmark = pytest.mark.unit


@given(st.integers(min_value=0, max_value=4_000_000_000_000))
def test_iso_time_is_the_utc_moment_to_the_millisecond(millis: int) -> None:
    timestamp = millis / 1000 + 0.0004  # within the millisecond, away from its edges
    expected = (
        datetime.datetime.fromtimestamp(millis // 1000, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        + f".{millis % 1000:03d}Z"
    )
    assert iso_time(timestamp) == expected


def test_iso_time_parses_back() -> None:
    text = iso_time(1_796_688_094.5357)
    assert text == "2026-12-08T00:01:34.535Z"
    parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert abs(parsed.timestamp() - 1_796_688_094.535) < 0.001


def test_output_head() -> None:
    assert output_head(None) == ""
    assert output_head("x" * 1000) == "x" * OUTPUT_HEAD_CHARS
    assert output_head({"sum": 3, "ok": True}) == '{"sum": 3, "ok": true}'
    assert output_head(["é"] * 300).startswith('["é", ')
    assert len(output_head(list(range(1000)))) == OUTPUT_HEAD_CHARS
