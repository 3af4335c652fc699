"""The recorded real tool lists, and the check that keeps the stand-ins' tools equal to them.

`tests/counterparts/*.tools.json` are the whole `tools/list` answers of the real Session-Buddy
0.36.0 and Akosha 0.24.5 (name, description, input schema of every tool). The stand-ins build
their tools from Python signatures with the MCP SDK, which words a schema a little differently
(`title` on every property and on the schema); `recorded_style` rewrites a generated schema the
way the real servers (FastMCP) list theirs, and `schema_differences` names every remaining
difference in what a caller can send: tool names, parameter names, types (with nested item and
object types), defaults, required parameters and whether unknown parameters are allowed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COUNTERPARTS_DIR = Path(__file__).resolve().parent.parent / "counterparts"
RECORDED_FILES = {
    "session-buddy": COUNTERPARTS_DIR / "session-buddy-0.36.0.tools.json",
    "akosha": COUNTERPARTS_DIR / "akosha-0.24.5.tools.json",
}
"""The recorded `tools/list` of each real server, by the stand-in's name."""

_WORDING_KEYS = frozenset({"title", "description", "examples"})
"""Schema keys that only describe; a caller sends the same arguments whatever they say."""


def recorded_tools(server: str) -> dict[str, dict[str, Any]]:
    """The real server's tools by name, as recorded (`name`, `description`, `inputSchema`)."""
    try:
        path = RECORDED_FILES[server]
    except KeyError:
        raise ValueError(
            f"no recorded tools/list for {server!r}; known: {', '.join(sorted(RECORDED_FILES))}"
        ) from None
    tools: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return {tool["name"]: tool for tool in tools}


def recorded_style(schema: Mapping[str, Any]) -> dict[str, Any]:
    """`schema` as the real servers list it: no titles, unknown parameters refused."""
    styled = _without_wording(schema, keep_descriptions=True)
    assert isinstance(styled, dict)
    styled["additionalProperties"] = False
    return styled


def _without_wording(value: Any, *, keep_descriptions: bool = False) -> Any:
    """`value` with the descriptive keys removed at every level (titles only, or all)."""
    dropped = {"title"} if keep_descriptions else _WORDING_KEYS
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in dropped and not isinstance(item, Mapping):
                continue
            if key == "properties" and isinstance(item, Mapping):
                # property names are data here, never wording: keep every one
                out[key] = {
                    name: _without_wording(sub, keep_descriptions=keep_descriptions)
                    for name, sub in item.items()
                }
            else:
                out[key] = _without_wording(item, keep_descriptions=keep_descriptions)
        return out
    if isinstance(value, list):
        return [_without_wording(item, keep_descriptions=keep_descriptions) for item in value]
    return value


def schema_differences(
    recorded: Mapping[str, Mapping[str, Any]], offered: Iterable[Mapping[str, Any]]
) -> list[str]:
    """Every way the offered tools (`name` plus `inputSchema` or `input_schema`, as listed by
    a server) differ from the recorded ones of the same names; empty when they agree.

    A tool the real server does not have is a difference; real tools the stand-in leaves out are
    not (a stand-in reproduces only the tools the project calls)."""
    differences: list[str] = []
    for tool in offered:
        name = str(tool["name"])
        real = recorded.get(name)
        if real is None:
            differences.append(f"{name}: the real server has no tool of this name")
            continue
        schema = tool.get("inputSchema", tool.get("input_schema")) or {}
        differences.extend(
            f"{name}: {problem}" for problem in _compare(real.get("inputSchema") or {}, schema)
        )
    return differences


def _compare(real: Mapping[str, Any], offered: Mapping[str, Any]) -> list[str]:
    real_plain = _without_wording(real)
    offered_plain = _without_wording(offered)
    problems: list[str] = []
    real_props: Mapping[str, Any] = real_plain.get("properties", {})
    offered_props: Mapping[str, Any] = offered_plain.get("properties", {})
    for missing in sorted(set(real_props) - set(offered_props)):
        problems.append(f"parameter {missing!r} is missing (real: {_show(real_props[missing])})")
    for extra in sorted(set(offered_props) - set(real_props)):
        problems.append(f"parameter {extra!r} does not exist on the real server")
    for param in sorted(set(real_props) & set(offered_props)):
        want, got = real_props[param], offered_props[param]
        if want == got:
            continue
        for key in sorted(set(want) | set(got)):
            if want.get(key, _ABSENT) != got.get(key, _ABSENT):
                problems.append(
                    f"parameter {param!r}: {key} is {_show(got.get(key, _ABSENT))}, "
                    f"the real one {_show(want.get(key, _ABSENT))}"
                )
    real_required = sorted(real_plain.get("required", []))
    offered_required = sorted(offered_plain.get("required", []))
    if real_required != offered_required:
        problems.append(
            f"required parameters are {offered_required}, the real ones {real_required}"
        )
    for key in ("type", "additionalProperties"):
        if real_plain.get(key, _ABSENT) != offered_plain.get(key, _ABSENT):
            problems.append(
                f"schema {key} is {_show(offered_plain.get(key, _ABSENT))}, "
                f"the real one {_show(real_plain.get(key, _ABSENT))}"
            )
    return problems


class _Absent:
    def __repr__(self) -> str:
        return "absent"


_ABSENT: Any = _Absent()


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "absent"
    return json.dumps(value, sort_keys=True)


TRANSCRIPT_FILES = {
    "session-buddy": COUNTERPARTS_DIR / "session-buddy-0.36.0.transcript.txt",
    "akosha": COUNTERPARTS_DIR / "akosha-0.24.5.transcript.txt",
}
"""Real calls and their real replies, verbatim, by the stand-in's name."""

_CALL_HEADER = re.compile(r"^--- (?P<tool>\w+)\((?P<args>.*)\) \[[\d.]+s isError=(?P<error>\w+)\]$")


@dataclass(frozen=True)
class RecordedReply:
    """One call of a recorded transcript: the tool, whether it was an error, the reply text."""

    tool: str
    is_error: bool
    text: str


def recorded_replies(server: str, tool: str) -> list[RecordedReply]:
    """The recorded replies of `tool` on the real `server`, in the order they were made."""
    replies: list[RecordedReply] = []
    current: tuple[str, bool] | None = None
    body: list[str] = []
    for line in [
        *TRANSCRIPT_FILES[server].read_text(encoding="utf-8").splitlines(),
        "--- end() [0s isError=False]",
    ]:
        header = _CALL_HEADER.match(line)
        if header is None:
            body.append(line)
            continue
        if current is not None and current[0] == tool:
            replies.append(RecordedReply(current[0], current[1], "\n".join(body).rstrip("\n")))
        current, body = (header["tool"], header["error"] == "True"), []
    return replies


def json_shape(value: Any) -> Any:
    """The structure of a JSON value: object keys with their shapes, a list's first item's shape,
    "number" for int and float alike, the type name of other scalars."""
    if isinstance(value, dict):
        return {key: json_shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_shape(value[0])] if value else []
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


def line_labels(text: str) -> list[str]:
    """The fixed part of each line of an emoji text reply, without the values: its indentation
    and first token, and the label up to ': ' when a short one leads the line
    ("📁 Project: x" -> "📁 Project:", "📝 some stored text" -> "📝")."""
    labels = []
    for line in text.splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        words = line.split()
        head, sep, _ = line.strip().partition(": ")
        if sep and len(head.split()) <= 4:
            labels.append(f"{indent}{head}:")
        else:
            labels.append(indent + (words[0] if words else ""))
    return labels
