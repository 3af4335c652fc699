"""Session-Buddy 0.36.0's reflections, as its memory tools show them (emoji text replies).

What the real server does without an embedding server (its `mcp/tools/memory/memory_tools.py`
and `adapters/reflection_adapter_oneiric.py`, and the recorded transcript):
- `store_reflection` checks `content` (not empty) and `project` (`^[a-zA-Z0-9._-]{1,128}$`);
  a refusal is a normal text reply starting with "❌", never `is_error`. Provenance given in a
  `provenance:{json}` tag fills `source_session_id` / `source_artifact_uri` when not passed.
- Search is SQL `LIKE` (case-sensitive; `%` and `_` are wildcards) on the whole query and on each
  of its words, or the whole query equal to a tag; whole-phrase hits first, then newest first;
  `min_score` is ignored on this path. `quick_search` shows the top hit, cut to 150 characters.
- A non-empty search result is cached by (query, limit) for 7 days, ignoring `project` and never
  invalidated by a store: a repeated query answers the cached hits (newest first) without their
  project and without applying `project` — the recorded transcript shows it (no "📁 Project").
- `reflection_stats` ignores `project` and counts every reflection and distinct project.
- `search_by_source_session` lists a session's reflections newest first.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

PROJECT_PATTERN = re.compile(r"^[a-zA-Z0-9._-]{1,128}$")


@dataclass
class Reflection:
    id: str
    content: str
    tags: list[str]
    project: str | None
    source_session_id: str | None
    source_artifact_uri: str | None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC).replace(tzinfo=None))


def uuid7_hex() -> str:
    """A time-ordered 32-hex-digit id, like the real reflection ids (`uuid7().hex`)."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis << 80) | (0x7 << 76) | (rand & ((1 << 76) - 1))
    value = (value & ~(0b11 << 62)) | (0b10 << 62)  # RFC 4122 variant
    return f"{value:032x}"


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def like(pattern: str, text: str) -> bool:
    """SQL `LIKE` as DuckDB does it: case-sensitive, `%` any run, `_` one character."""
    wildcards = {"%": ".*", "_": "."}
    regex = "".join(wildcards.get(c) or re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.DOTALL) is not None


def provenance_from_tags(tags: list[str]) -> tuple[str | None, str | None]:
    for tag in tags:
        if not tag.startswith("provenance:"):
            continue
        try:
            found = json.loads(tag.removeprefix("provenance:"))
        except ValueError:
            continue
        if isinstance(found, dict):
            sid, uri = found.get("source_session_id"), found.get("source_artifact_uri")
            return (sid if isinstance(sid, str) else None, uri if isinstance(uri, str) else None)
    return None, None


_INJECTION = [
    re.compile(r"ignore\s+(all\s+)?previous\s+instructions?", re.IGNORECASE),
    re.compile(r"\bHuman:\s", re.MULTILINE),
    re.compile(r"\bAssistant:\s", re.MULTILINE),
    re.compile(r"</?(system|instruction|prompt)\s*>", re.IGNORECASE),
    re.compile(r"act\s+as\s+(root|admin|superuser|god\s*mode)", re.IGNORECASE),
    re.compile(r"reveal\s+(all\s+)?(secret|password|token|key)", re.IGNORECASE),
    re.compile(
        r"override\s+(all\s+)?(previous|prior|current)\s+(guideline|instruction|rule)",
        re.IGNORECASE,
    ),
    re.compile(r"\[INST\]|\[/INST\]|<<SYS>>|<</SYS>>", re.IGNORECASE),
]
_REDACTIONS = [
    (re.compile(r"\b(sk|pk|rk)_[a-zA-Z0-9]{20,}", re.IGNORECASE), "[REDACTED-SECRET]"),
    (re.compile(r"\bghp_[a-zA-Z0-9]{36}\b"), "[REDACTED-SECRET]"),
    (re.compile(r"AKIA[0-9A-Z]{16}"), "[REDACTED-SECRET]"),
    (
        re.compile(r"\beyJ[a-zA-Z0-9_\-]{20,}\.[a-zA-Z0-9_\-]{20,}\.[a-zA-Z0-9_\-]{20,}\b"),
        "[REDACTED-SECRET]",
    ),
    (re.compile(r"\b[a-zA-Z0-9._%+\-]+@[a-zA-Z0-9.\-]+\.[a-zA-Z]{2,}\b"), "[REDACTED-EMAIL]"),
    (re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), "[REDACTED-SSN]"),
    (
        re.compile(r"\b(?:\+?\d{1,3}[\s\-.]?)?\(?\d{3}\)?[\s\-.]?\d{3}[\s\-.]?\d{4}\b"),
        "[REDACTED-PHONE]",
    ),
    (re.compile(r"\b\d{4}[\s\-]?\d{4}[\s\-]?\d{4}[\s\-]?\d{4}\b"), "[REDACTED-CC]"),
]
_PROTECTED_TAGS = frozenset({"feedback", "user"})
_PROTECTED_OVERRIDE = re.compile(
    r"(?:^|\n)\s*(?:feedback|user)\s*:\s+", re.IGNORECASE | re.MULTILINE
)
SIZE_LIMIT_BYTES = 10_000


class MemoryGuardBlocked(Exception):
    """The real server's MemoryGuardBlockedError: the tool call fails (`is_error`)."""


def guard(content: str, tags: list[str]) -> tuple[str, list[str]]:
    """Session-Buddy's memory guard, which screens every write: content over 10,000 bytes is cut
    there and quarantined (tags `quarantine`, `hash:H` put first), as is content that looks like
    a prompt injection; secrets, e-mail addresses, SSNs, phone-like digit runs and card numbers
    are replaced by `[REDACTED-...]`; `feedback`/`user` tags with "user: ..." content block."""
    digest = hashlib.sha256(content.encode("utf-8", errors="replace")).hexdigest()[:16]
    quarantine = ["quarantine", f"hash:{digest}", *tags]
    if len(content.encode("utf-8", errors="replace")) > SIZE_LIMIT_BYTES:
        return content[:SIZE_LIMIT_BYTES], quarantine
    if _PROTECTED_TAGS.intersection(tags) and _PROTECTED_OVERRIDE.search(content):
        raise MemoryGuardBlocked("Memory guard blocked write: rule=protected_key_tampering")
    if any(pattern.search(content) for pattern in _INJECTION):
        return content, quarantine
    for pattern, placeholder in _REDACTIONS:
        content = pattern.sub(placeholder, content)
    return content, tags


class Reflections:
    """The reflections of one stand-in process, with the real server's search cache."""

    def __init__(self) -> None:
        self.rows: list[Reflection] = []
        self._cache: dict[tuple[str, int], list[str]] = {}

    def reset(self) -> None:
        self.rows.clear()
        self._cache.clear()

    def store(
        self,
        content: str,
        tags: list[str],
        project: str | None,
        source_session_id: str | None = None,
        source_artifact_uri: str | None = None,
    ) -> Reflection:
        if not content.strip():
            raise ValueError("content cannot be empty")
        content, tags = guard(content, tags)
        tag_sid, tag_uri = provenance_from_tags(tags)
        row = Reflection(
            uuid7_hex(),
            content,
            list(tags),
            project,
            source_session_id or tag_sid,
            source_artifact_uri or tag_uri,
        )
        self.rows.append(row)
        return row

    def search(self, query: str, limit: int, project: str | None) -> list[dict[str, Any]]:
        cached = self._cache.get((query, limit))
        if cached is not None:
            hits = sorted(
                (row for row in self.rows if row.id in cached),
                key=lambda row: row.created_at,
                reverse=True,
            )
            return [{"content": r.content, "created_at": r.created_at.isoformat()} for r in hits]
        words = query.split()
        if not words:
            return []
        patterns = [f"%{query}%", *(f"%{word}%" for word in words)]
        matched = [
            row
            for row in self.rows
            if (any(like(p, row.content) for p in patterns) or query in row.tags)
            and (project is None or row.project == project)
        ]
        matched.sort(key=lambda row: row.created_at, reverse=True)
        matched.sort(key=lambda row: 0 if like(patterns[0], row.content) else 1)
        hits = matched[:limit]
        if hits:
            self._cache[(query, limit)] = [row.id for row in hits]
        return [
            {"content": r.content, "created_at": r.created_at.isoformat(), "project": r.project}
            for r in hits
        ]

    def by_session(self, session_id: str, limit: int) -> list[Reflection]:
        rows = [row for row in self.rows if row.source_session_id == session_id]
        rows.sort(key=lambda row: row.created_at, reverse=True)
        return rows[:limit]


def memory_tools(reflections: Reflections) -> list[Any]:
    """The memory tools the project calls, over `reflections`."""

    async def store_reflection(
        content: str,
        tags: list[str] | None = None,
        project: str | None = None,
        source_session_id: str | None = None,
        source_artifact_uri: str | None = None,
    ) -> str:
        if not content.strip():
            return "❌ Validation error: Store reflection - content cannot be empty"
        if project is not None and not PROJECT_PATTERN.match(project):
            return (
                "❌ Validation error: Store reflection - project must match ^[a-zA-Z0-9._-]{1,128}$"
            )
        row = reflections.store(
            content, tags or [], project, source_session_id, source_artifact_uri
        )
        lines = ["💾 Reflection stored successfully!", f"📝 Content: {truncate(row.content, 100)}"]
        if row.tags:
            lines.append(f"🏷️ Tags: {', '.join(row.tags)}")
        lines.append(f"📅 Stored: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S')}")
        if project:
            lines.append(f"📁 Project: {project}")
        return "\n".join(lines)

    async def quick_search(query: str, min_score: float = 0.7, project: str | None = None) -> str:
        hits = reflections.search(query, 1, project)
        lines = [f"🔍 Quick search for: '{query}'"]
        if not hits:
            lines += [
                "🔍 No results found",
                "💡 Try adjusting your search terms or lowering min_score",
            ]
            return "\n".join(lines)
        top = hits[0]
        lines += ["📊 Found results (showing top 1)", f"📝 {truncate(top['content'], 150)}"]
        if top.get("project"):
            lines.append(f"📁 Project: {top['project']}")
        lines.append(f"📅 Date: {top['created_at']}")
        return "\n".join(lines)

    async def reflection_stats(project: str | None = None) -> str:
        total = len(reflections.rows)
        projects = len({row.project for row in reflections.rows if row.project is not None})
        lines = [
            "📊 Reflection Database Statistics",
            "=" * 40,
            f"📈 Total reflections: {total}",
            f"📁 Projects: {projects}",
            f"\n🏥 Database health: {'✅ Healthy' if total > 0 else '⚠️ Empty'}",
        ]
        return "\n".join(lines)

    async def search_by_source_session(session_id: str, limit: int = 20) -> str:
        if not session_id.strip():
            return "❌ Validation error: Search by source session - session_id cannot be empty"
        rows = reflections.by_session(session_id, limit)
        lines = [f"📡 Reflections produced by session: '{session_id}'", "=" * 50]
        if not rows:
            lines += [
                "🔍 No reflections found for this session",
                "💡 Confirm the session_id — it must match the value",
                "    passed to store_reflection(source_session_id=...)",
            ]
            return "\n".join(lines)
        lines.append(f"📊 Found {len(rows)} reflection(s)")
        for row in rows:
            lines += [
                f"  • id={row.id}  📅 {row.created_at.isoformat()}",
                f"    📝 {truncate(row.content, 150)}",
            ]
            if row.project:
                lines.append(f"    📁 Project: {row.project}")
            if row.source_artifact_uri:
                lines.append(f"    🔗 Artifact: {row.source_artifact_uri}")
        return "\n".join(lines)

    return [store_reflection, quick_search, search_by_source_session, reflection_stats]
