"""Search over every source of memory: the local records (BM25, `shared/memory.py`),
Session-Buddy (`quick_search`) and Akosha (`search_all_systems`).

Ranking rule (reciprocal-rank fusion): each source ranks its own hits; a task's score is the sum
over the sources that found it of 1 / (RRF_K + its rank there), so a task several sources agree
on comes first, and no source's raw scores (BM25, similarity, none at all) are compared with
another's. Ties go to the higher local BM25 score, then to the most recent record. Hits are
de-duplicated by task id and carry the list of sources that found them. Service hits are mapped
to tasks by the header the aggregator writes (`mahavishnu task T in pool P`); a service hit that
names no task (another producer's record, Akosha's placeholder) is left out. A service that
cannot be reached or answers with an error leaves its hits out and adds a warning; the search
itself never fails for it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.memory.destinations import (
    AKOSHA,
    HEADER_RE,
    SESSION_BUDDY,
    SyncFailure,
    ToolCaller,
    connect,
    default_project,
    reply_text,
)
from shared.config import Settings
from shared.connection import Redis
from shared.errors import InvalidRequest, RemoteError
from shared.memory import MemoryRecord, search_memory

LOCAL = "local"
SOURCES = (LOCAL, SESSION_BUDDY, AKOSHA)
Source = Literal["local", "session-buddy", "akosha", "all"]
RRF_K = 60
SERVICE_TIMEOUT = 10.0  # seconds a service may take to answer a search
_SB_CONTENT_RE = re.compile(r"^\s*(?:\d+\.\s*)?📝\s?(?P<content>.*)$")


@dataclass
class SourceHit:
    """One hit as a source returned it."""

    task_id: str
    pool_id: str
    text: str
    score: float  # the source's own score (BM25, similarity; 0 when it gives none)
    status: str = ""


@dataclass
class FederatedHit:
    """A task found by one or more sources."""

    task_id: str
    pool_id: str
    score: float  # the fused score (see the module docstring)
    sources: list[str]
    text: str
    status: str = ""
    record: MemoryRecord | None = None  # the local record, when the local search found it
    source_scores: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        r = self.record
        return {
            "task_id": self.task_id,
            "pool_id": self.pool_id,
            "score": round(self.score, 6),
            "sources": self.sources,
            "source_scores": self.source_scores,
            "status": self.status,
            "text": self.text,
            "prompt": r.prompt if r else "",
            "output": r.output if r else "",
            "error": r.error if r else "",
            "finished_at": r.finished_at if r else 0.0,
            "tags": list(r.tags) if r else [],
        }


@dataclass
class FederatedOutcome:
    """The fused hits, what was searched and the warnings of sources left out."""

    hits: list[FederatedHit]
    sources: list[str]
    warnings: list[str]
    scanned: int
    pool_ids: list[str]


def wanted_sources(source: str, settings: Settings) -> list[str]:
    """The sources a `--source` value names (`all`: local plus the configured services)."""
    if source == "all":
        return [LOCAL, *[d for d in SOURCES[1:] if d in settings.memory_sync_destinations]]
    if source not in SOURCES:
        raise InvalidRequest(f"source={source!r}: must be one of local, session-buddy, akosha, all")
    return [source]


def fuse(ranked: dict[str, list[SourceHit]], limit: int) -> list[FederatedHit]:
    """Reciprocal-rank fusion of each source's ranked hits, one hit per task."""
    fused: dict[str, FederatedHit] = {}
    for source, hits in ranked.items():
        rank = 0
        for hit in hits:
            if not hit.task_id:
                continue
            found = fused.get(hit.task_id)
            if found is not None and source in found.sources:
                continue  # a source naming a task twice counts once, at its best rank
            rank += 1
            if found is None:
                found = fused[hit.task_id] = FederatedHit(
                    hit.task_id, hit.pool_id, 0.0, [], hit.text, hit.status
                )
            found.score += 1.0 / (RRF_K + rank)
            found.sources.append(source)
            found.source_scores[source] = round(hit.score, 6)
            if not found.pool_id:
                found.pool_id = hit.pool_id
    found_hits = list(fused.values())
    found_hits.sort(
        key=lambda h: (
            h.score,
            h.source_scores.get(LOCAL, 0.0),
            h.record.finished_at if h.record else 0.0,
        ),
        reverse=True,
    )
    return found_hits[:limit]


def parse_reflections(reply: Any) -> list[SourceHit]:
    """Session-Buddy's text reply (quick_search and friends): one hit per `📝` line that
    carries the aggregator's task header."""
    answer = reply_text(reply)
    if answer is None:
        raise SyncFailure(f"quick_search answered {str(reply)[:200]!r}, not text")
    hits: list[SourceHit] = []
    lines = answer.splitlines()
    for number, line in enumerate(lines):
        match = _SB_CONTENT_RE.match(line)
        if not match:
            continue
        content = match.group("content")
        header = HEADER_RE.search(content)
        if header is None and number + 1 < len(lines):
            header = HEADER_RE.search(lines[number + 1])
        if header is None:
            continue
        status = re.search(r"\((\w+)\)", content[header.end() : header.end() + 40])
        hits.append(
            SourceHit(
                header["task"], header["pool"], content, 0.0, status.group(1) if status else ""
            )
        )
    return hits


def parse_akosha(reply: Any) -> list[SourceHit]:
    """Akosha's `search_all_systems` reply: results carrying our metadata or task header."""
    if not isinstance(reply, dict):
        raise SyncFailure(f"search_all_systems answered {str(reply)[:200]!r}")
    if reply.get("status") == "failed":
        raise SyncFailure(f"search_all_systems failed: {reply.get('error', reply)}")
    hits: list[SourceHit] = []
    for item in reply.get("results") or []:
        if not isinstance(item, dict):
            continue
        raw_meta = item.get("metadata")
        meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
        body = str(item.get("text") or item.get("content") or "")
        header = HEADER_RE.search(body)
        task = str(meta.get("task") or (header["task"] if header else ""))
        pool = str(meta.get("pool") or (header["pool"] if header else ""))
        if not task:  # another producer's memory, or the placeholder of an empty result
            continue
        score = item.get("similarity", item.get("score", 0.0))
        hits.append(
            SourceHit(
                task,
                pool,
                body,
                float(score) if isinstance(score, int | float) else 0.0,
                str(meta.get("status") or ""),
            )
        )
    return hits


async def _service_hits(settings: Settings, source: str, query: str, limit: int) -> list[SourceHit]:
    async with connect(settings, source) as remote:
        caller = ToolCaller(remote, settings)
        if source == SESSION_BUDDY:
            reply = await caller.call(
                "quick_search",
                {"query": query, "min_score": 0.0, "project": default_project(settings)},
            )
            return parse_reflections(reply)
        reply = await caller.call(
            "search_all_systems",
            {"query": query, "limit": limit, "threshold": settings.memory_search_threshold},
        )
        return parse_akosha(reply)


async def search_all(
    redis: Redis,
    settings: Settings,
    query: str,
    *,
    limit: int = 20,
    pool_ids: Sequence[str] | None = None,
    source: str = "all",
) -> FederatedOutcome:
    """Search the chosen sources and fuse their hits (InvalidRequest for a bad source or
    limit, PoolNotFound for an unknown pool: those are the caller's mistakes)."""
    sources = wanted_sources(source, settings)
    ranked: dict[str, list[SourceHit]] = {}
    warnings: list[str] = []
    records: dict[str, MemoryRecord] = {}
    scanned, searched_pools = 0, list(pool_ids or [])
    if LOCAL in sources:
        local = await search_memory(redis, settings, query, limit=limit, pool_ids=pool_ids)
        scanned, searched_pools = local.scanned, local.pool_ids
        ranked[LOCAL] = []
        for hit in local.hits:
            r = hit.record
            records[r.task_id] = r
            ranked[LOCAL].append(SourceHit(r.task_id, r.pool_id, r.prompt, hit.score, r.status))
    services = [s for s in sources if s != LOCAL]
    if services and not query.strip():
        warnings.append("the memory services were not asked: an empty query lists local records")
        services = []
    replies = await asyncio.gather(
        *(
            asyncio.wait_for(_service_hits(settings, s, query, limit), SERVICE_TIMEOUT)
            for s in services
        ),
        return_exceptions=True,
    )
    for service, reply in zip(services, replies, strict=True):
        if isinstance(reply, BaseException):
            warnings.append(f"{service} left out: {_reason(reply)}")
            continue
        wanted = set(pool_ids or [])
        ranked[service] = [h for h in reply if not wanted or h.pool_id in wanted]
    fused = fuse(ranked, limit)
    for found in fused:
        found.record = records.get(found.task_id)
        if found.record is not None:
            found.text, found.status = found.record.prompt, found.record.status
    fused.sort(
        key=lambda h: (
            h.score,
            h.source_scores.get(LOCAL, 0.0),
            h.record.finished_at if h.record else 0.0,
        ),
        reverse=True,
    )
    return FederatedOutcome(fused, sources, warnings, scanned, searched_pools)


def _reason(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, TimeoutError):
        return f"no answer within {SERVICE_TIMEOUT:g} s"
    if isinstance(exc, RemoteError | SyncFailure):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
