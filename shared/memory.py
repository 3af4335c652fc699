"""Relevance-ranked search over the pools' memory streams (`pool:{P}:memory`).

Every finished task leaves a memory record (task, pool, worker, status, prompt, output, error,
duration, finished_at, tags) in its pool's memory stream. `search_memory` reads the most recent
records of the chosen pools and ranks them with BM25 over the tokens of the prompt, the tags,
the output and the error (prompt and tags count double: they say what the task was about).
Equal scores go to the more recent record; a task appears once (a result shared with other
pools is filed in each). A query without any searchable word returns the most recent records.

The ranking is a pure function (`rank`), so it is tested without Redis; reading is bounded per
pool (`scan_limit`), so one search never pulls a whole deployment's history into memory.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from shared.config import Settings
from shared.connection import Redis
from shared.errors import InvalidRequest, PoolNotFound
from shared.models import ID_PATTERN
from shared.replies import decode_hash, stream_entries, text
from shared.state import live_pool_ids

BM25_K1 = 1.2
BM25_B = 0.75
FIELD_WEIGHTS = {"prompt": 2, "tags": 2, "output": 1, "error": 1}
DEFAULT_SCAN_LIMIT = 2000
MAX_LIMIT = 1000
_PAGE = 500
_ID_RE = re.compile(ID_PATTERN)
_WORD_RE = re.compile(r"[^\W_]+")
STOP_WORDS = frozenset(
    {
        *("a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "has", "have"),
        *("in", "is", "it", "its", "of", "on", "or", "that", "the", "this", "to", "was", "were"),
        *("will", "with"),
    }
)


def stem(word: str) -> str:
    """A light English suffix stripper, so `tests`, `testing` and `tested` meet `test`."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    for suffix, keep in (("ing", 3), ("ed", 3), ("es", 3), ("s", 3)):
        if word.endswith(suffix) and len(word) - len(suffix) >= keep:
            if suffix == "s" and word.endswith("ss"):
                return word
            if suffix == "es" and not word.endswith(("ches", "shes", "sses", "xes", "zes")):
                continue
            return word[: -len(suffix)]
    return word


def tokenize(value: str) -> list[str]:
    """Lower-cased, stemmed words of `value` (letters and digits), without stop words."""
    words = _WORD_RE.findall(value.casefold())
    return [stem(w) for w in words if w not in STOP_WORDS]


@dataclass(frozen=True)
class MemoryRecord:
    """One memory record as a worker wrote it."""

    entry_id: str
    task_id: str
    pool_id: str
    worker_id: str
    status: str
    prompt: str
    output: str
    error: str
    duration: float
    finished_at: float
    tags: tuple[str, ...] = ()

    @classmethod
    def from_fields(cls, entry_id: str, fields: dict[str, str], pool_id: str) -> MemoryRecord:
        """Build a record from stream fields; missing or unreadable numbers become 0."""

        def number(name: str) -> float:
            try:
                return float(fields.get(name, "") or 0)
            except ValueError:
                return 0.0

        tags = tuple(t for t in (fields.get("tags") or "").split(",") if t)
        return cls(
            entry_id=entry_id,
            task_id=fields.get("task", ""),
            pool_id=fields.get("pool") or pool_id,
            worker_id=fields.get("worker", ""),
            status=fields.get("status", ""),
            prompt=fields.get("prompt", ""),
            output=fields.get("output", ""),
            error=fields.get("error", ""),
            duration=number("duration"),
            finished_at=number("finished_at"),
            tags=tags,
        )

    def weighted_terms(self) -> Counter[str]:
        """Term frequencies with the field weights applied."""
        counts: Counter[str] = Counter()
        parts = {
            "prompt": self.prompt,
            "tags": " ".join(self.tags),
            "output": self.output,
            "error": self.error,
        }
        for name, value in parts.items():
            weight = FIELD_WEIGHTS[name]
            for token in tokenize(value):
                counts[token] += weight
        return counts


@dataclass(frozen=True)
class MemoryHit:
    """A record and its relevance score (0 for an empty query)."""

    record: MemoryRecord
    score: float


@dataclass
class SearchOutcome:
    """The ranked hits plus what was searched."""

    hits: list[MemoryHit]
    pool_ids: list[str]
    scanned: int
    query_terms: list[str] = field(default_factory=list)


def _recency(record: MemoryRecord) -> tuple[float, str]:
    return (record.finished_at, record.entry_id)


def rank(records: Sequence[MemoryRecord], query: str, limit: int) -> list[MemoryHit]:
    """BM25-rank `records` for `query`; ties (and an empty query) go most recent first."""
    terms = tokenize(query)
    if not terms:
        recent = sorted(records, key=_recency, reverse=True)
        return _unique((MemoryHit(r, 0.0) for r in recent), limit)
    docs = [r.weighted_terms() for r in records]
    total = len(docs)
    lengths = [sum(d.values()) for d in docs]
    avg_len = (sum(lengths) / total) if total else 0.0
    wanted = Counter(terms)
    df = {t: sum(1 for d in docs if t in d) for t in wanted}
    idf = {t: math.log(1.0 + (total - n + 0.5) / (n + 0.5)) for t, n in df.items()}
    hits: list[MemoryHit] = []
    for record, doc, length in zip(records, docs, lengths, strict=True):
        score = 0.0
        norm = BM25_K1 * (1 - BM25_B + BM25_B * (length / avg_len if avg_len else 0.0))
        for term, times in wanted.items():
            tf = doc.get(term, 0)
            if tf:
                score += times * idf[term] * tf * (BM25_K1 + 1) / (tf + norm)
        if score > 0:
            hits.append(MemoryHit(record, round(score, 6)))
    hits.sort(key=lambda h: (h.score, *_recency(h.record)), reverse=True)
    return _unique(hits, limit)


def _unique(hits: Iterable[MemoryHit], limit: int) -> list[MemoryHit]:
    """The first hit per task (a result shared with other pools is filed in each of them)."""
    seen: set[str] = set()
    kept: list[MemoryHit] = []
    for hit in hits:
        key = hit.record.task_id or hit.record.entry_id
        if key in seen:
            continue
        seen.add(key)
        kept.append(hit)
        if len(kept) >= limit:
            break
    return kept


async def read_pool_memory(
    redis: Redis, settings: Settings, pool_id: str, scan_limit: int
) -> list[MemoryRecord]:
    """The pool's most recent memory records (at most `scan_limit`), newest first."""
    key = settings.keys.pool_memory(pool_id)
    records: list[MemoryRecord] = []
    upper = "+"
    while len(records) < scan_limit:
        count = min(_PAGE, scan_limit - len(records))
        page = stream_entries(await redis.xrevrange(key, max=upper, min="-", count=count))
        if not page:
            break
        for entry_id, fields in page:
            records.append(MemoryRecord.from_fields(text(entry_id), decode_hash(fields), pool_id))
        if len(page) < count:
            break
        upper = "(" + text(page[-1][0])
    return records


async def _check_pools(redis: Redis, settings: Settings, pool_ids: Iterable[str]) -> list[str]:
    """Validate explicitly named pools: a pool is known if its hash or memory stream exists."""
    ids = list(dict.fromkeys(pool_ids))
    for pool_id in ids:
        if not _ID_RE.match(pool_id):
            raise InvalidRequest(f"pool_ids: {pool_id!r} is not a valid pool id")
    keys = settings.keys
    pipe = redis.pipeline(transaction=False)
    for pool_id in ids:
        pipe.exists(keys.pool(pool_id), keys.pool_memory(pool_id))
    found = await pipe.execute() if ids else []
    unknown = [p for p, n in zip(ids, found, strict=True) if not n]
    if unknown:
        raise PoolNotFound(
            f"no pool (live or closed) and no memory records for pool id(s) {', '.join(unknown)}"
        )
    return ids


async def search_memory(
    redis: Redis,
    settings: Settings,
    query: str,
    *,
    limit: int = 100,
    pool_ids: Sequence[str] | None = None,
    scan_limit: int = DEFAULT_SCAN_LIMIT,
) -> SearchOutcome:
    """Search the memory records of `pool_ids` (default: every live pool), best match first.

    Closed pools keep their memory streams; name them in `pool_ids` to search them too.
    Raises InvalidRequest for a bad limit or pool id, PoolNotFound for an unknown pool id.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit={limit}: must be between 1 and {MAX_LIMIT}")
    if scan_limit < 1:
        raise InvalidRequest(f"scan_limit={scan_limit}: must be at least 1")
    if pool_ids:
        ids = await _check_pools(redis, settings, pool_ids)
    else:
        ids = await live_pool_ids(redis, settings)
    records: list[MemoryRecord] = []
    for pool_id in ids:
        records.extend(await read_pool_memory(redis, settings, pool_id, scan_limit))
    return SearchOutcome(
        hits=rank(records, query, limit),
        pool_ids=ids,
        scanned=len(records),
        query_terms=list(dict.fromkeys(tokenize(query))),
    )
