"""Memory search: tokenising, BM25 ranking with a recency tie-break, and reading real streams."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared.config import Settings
from shared.connection import Redis
from shared.errors import InvalidRequest, PoolNotFound
from shared.memory import (
    MemoryRecord,
    rank,
    read_pool_memory,
    search_memory,
    stem,
    tokenize,
)
from shared.models import PoolSpec, PoolStatus
from shared.state import pool_hash_fields


def record(
    n: int,
    prompt: str,
    output: str = "",
    *,
    tags: tuple[str, ...] = (),
    finished_at: float | None = None,
    pool: str = "p1",
    error: str = "",
) -> MemoryRecord:
    return MemoryRecord(
        entry_id=f"{1000 + n}-0",
        task_id=f"t-{n}",
        pool_id=pool,
        worker_id="w1",
        status="completed",
        prompt=prompt,
        output=output,
        error=error,
        duration=0.1,
        finished_at=float(n) if finished_at is None else finished_at,
        tags=tags,
    )


def test_tokenize_lowercases_stems_and_drops_stop_words() -> None:
    assert tokenize("Write the TESTS for the API, testing is good!") == [
        "write",
        "test",
        "api",
        "test",
        "good",
    ]
    assert tokenize("queries passes boxes") == ["query", "pass", "box"]
    assert tokenize("snake_case-words") == ["snake", "case", "word"]
    assert tokenize("...") == []


def test_stem_leaves_short_words_alone() -> None:
    assert stem("bus") == "bus"
    assert stem("class") == "class"
    assert stem("used") == "used"
    assert stem("implemented") == "implement"


def test_rank_orders_by_relevance() -> None:
    records = [
        record(1, "deploy the frontend"),
        record(2, "write unit tests for the api", "added 12 tests"),
        record(3, "fix the api timeout", "api client retries now"),
        record(4, "refactor database layer"),
    ]
    hits = rank(records, "api tests", limit=10)
    assert [h.record.task_id for h in hits] == ["t-2", "t-3"]
    assert hits[0].score > hits[1].score > 0


def test_rare_terms_weigh_more_than_common_ones() -> None:
    records = [record(i, "python task number") for i in range(1, 6)]
    records.append(record(9, "python kubernetes task"))
    hits = rank(records, "python kubernetes", limit=3)
    assert hits[0].record.task_id == "t-9"


def test_prompt_and_tags_count_more_than_output() -> None:
    records = [
        record(1, "misc", "the word invoice appears in output"),
        record(2, "summarise invoice", "done"),
        record(3, "misc", "done", tags=("invoice",)),
    ]
    hits = rank(records, "invoice", limit=10)
    assert {h.record.task_id for h in hits[:2]} == {"t-2", "t-3"}
    assert hits[-1].record.task_id == "t-1"


def test_equal_scores_go_most_recent_first() -> None:
    records = [record(n, "same words here", finished_at=100.0 + n) for n in (3, 1, 2)]
    hits = rank(records, "words", limit=10)
    assert [h.record.task_id for h in hits] == ["t-3", "t-2", "t-1"]


def test_limit_and_no_match() -> None:
    records = [record(n, f"task about alpha {n}") for n in range(1, 20)]
    assert len(rank(records, "alpha", limit=5)) == 5
    assert rank(records, "omega", limit=5) == []
    assert rank([], "alpha", limit=5) == []


def test_empty_query_lists_the_most_recent() -> None:
    records = [record(n, f"task {n}") for n in range(1, 6)]
    hits = rank(records, "  the  ", limit=2)
    assert [h.record.task_id for h in hits] == ["t-5", "t-4"]
    assert all(h.score == 0.0 for h in hits)


def test_errors_are_searchable() -> None:
    records = [record(1, "run job", error="timed out after 5s"), record(2, "run job")]
    assert [h.record.task_id for h in rank(records, "timed out", limit=5)] == ["t-1"]


@pytest.fixture
async def live() -> AsyncIterator[tuple[Redis, Settings]]:
    settings = Settings(key_prefix=f"test-{os.urandom(4).hex()}:")
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        yield client, settings
    finally:
        keys = [k async for k in client.scan_iter(match=f"{settings.key_prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def _add(client: Any, settings: Settings, pool: str, n: int, prompt: str) -> None:
    await client.xadd(
        settings.keys.pool_memory(pool),
        {
            "task": f"t-{pool}-{n}",
            "pool": pool,
            "worker": "w1",
            "status": "completed",
            "prompt": prompt,
            "output": f"output {n}",
            "error": "",
            "duration": "0.5",
            "finished_at": repr(1000.0 + n),
            "tags": "alpha,beta",
        },
    )


async def _live_pool(client: Redis, settings: Settings, pool: str) -> None:
    spec = PoolSpec(id=pool, name=pool)
    await client.hset(settings.keys.pool(pool), mapping=pool_hash_fields(spec, PoolStatus.RUNNING))
    await client.sadd(settings.keys.pools, pool)


async def test_search_reads_live_pools_and_named_closed_ones(
    live: tuple[Redis, Settings],
) -> None:
    client, settings = live
    await _live_pool(client, settings, "pa")
    await _live_pool(client, settings, "pb")
    await _add(client, settings, "pa", 1, "build the docs site")
    await _add(client, settings, "pb", 2, "build the api server")
    await _add(client, settings, "gone", 3, "build something old")

    found = await search_memory(client, settings, "build api", limit=10)
    assert found.pool_ids == ["pa", "pb"]
    assert found.scanned == 2
    assert [h.record.task_id for h in found.hits] == ["t-pb-2", "t-pa-1"]
    first = found.hits[0].record
    assert (first.pool_id, first.tags, first.duration, first.finished_at) == (
        "pb",
        ("alpha", "beta"),
        0.5,
        1002.0,
    )

    found = await search_memory(client, settings, "old", limit=10, pool_ids=["gone", "gone"])
    assert found.pool_ids == ["gone"]
    assert [h.record.task_id for h in found.hits] == ["t-gone-3"]


async def test_search_rejects_unknown_pools_and_bad_limits(
    live: tuple[Redis, Settings],
) -> None:
    client, settings = live
    with pytest.raises(PoolNotFound, match="nosuch"):
        await search_memory(client, settings, "x", pool_ids=["nosuch"])
    with pytest.raises(InvalidRequest, match="not a valid pool id"):
        await search_memory(client, settings, "x", pool_ids=["bad id}"])
    with pytest.raises(InvalidRequest, match="limit=0"):
        await search_memory(client, settings, "x", limit=0)
    empty = await search_memory(client, settings, "x")
    assert (empty.hits, empty.pool_ids, empty.scanned) == ([], [], 0)


async def test_reading_is_bounded_and_newest_first(live: tuple[Redis, Settings]) -> None:
    client, settings = live
    pipe = client.pipeline(transaction=False)
    for n in range(1, 1203):
        await _add(pipe, settings, "pa", n, f"task {n}")
    await pipe.execute()
    records = await read_pool_memory(client, settings, "pa", scan_limit=1100)
    assert len(records) == 1100
    assert records[0].task_id == "t-pa-1202"
    assert records[-1].task_id == "t-pa-103"
    assert len({r.entry_id for r in records}) == 1100
