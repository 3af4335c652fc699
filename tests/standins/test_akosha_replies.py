"""Akosha's replies, through the real SDK HTTP client: the stand-in (or, with
MAHAVISHNU_REAL_AKOSHA_URL, the real server) answers the tools the project calls with the real
shapes (tests/counterparts/akosha-0.24.5.transcript.txt) and behaviours: a store without a
384-float embedding fails with `"status": "failed"` (not `is_error`), a second store of an id
fails, embeddings are deterministic, search returns only `metadata.source == "mahavishnu"`
memories and the exact stored text scores 1.0. Ids and texts are unique per test, so the tests
also hold on a real server that keeps what earlier runs stored."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import pytest
from mcp import Client

from tests.standins.fixtures import Counterpart, connected, error_text, reply_json
from tests.standins.schema import TRANSCRIPT_FILES, json_shape

pytestmark = pytest.mark.counterparts

REFUSED = "Embedding is required: must be a 384-dimensional vector"


async def call(client: Client, tool: str, **arguments: Any) -> Any:
    return reply_json(await client.call_tool(tool, arguments))


def recorded_embedding_reply() -> Any:
    """The recorded `generate_embedding` reply (its vector elided in the transcript)."""
    lines = TRANSCRIPT_FILES["akosha"].read_text(encoding="utf-8").splitlines()
    reply = next(line for line in lines if line.startswith('{"text"'))
    return json.loads(reply.replace("[...384 floats...]", "[0.5]"))


async def test_embeddings_are_deterministic_unit_vectors(akosha: Counterpart) -> None:
    async with connected(akosha) as client:
        one = await call(client, "generate_embedding", text="  Task 001   finished ")
        assert json_shape(one) == json_shape(recorded_embedding_reply())
        assert (one["text"], one["embedding_dim"], one["mode"]) == (
            "Task 001 finished",
            384,
            "fallback",
        )
        assert len(one["embedding"]) == 384
        assert math.isclose(math.sqrt(sum(v * v for v in one["embedding"])), 1.0, abs_tol=1e-5)
        again = await call(client, "generate_embedding", text="Task 001 finished")
        assert again["embedding"] == one["embedding"]
        batch = await call(
            client, "generate_batch_embeddings", texts=["Task 001 finished", "other"]
        )
        assert (batch["count"], batch["embedding_dim"], batch["mode"]) == (2, 384, "fallback")
        assert batch["embeddings"][0] == one["embedding"]
        dot = sum(a * b for a, b in zip(*batch["embeddings"], strict=True))
        assert abs(dot) < 0.5  # different texts: unrelated vectors


async def test_a_store_without_a_384_float_embedding_fails(akosha: Counterpart) -> None:
    token = uuid.uuid4().hex[:12]
    vector = [0.05] * 384
    async with connected(akosha) as client:
        assert await call(client, "store_memory", memory_id=f"m-{token}", text="x") == {
            "status": "failed",
            "memory_id": f"m-{token}",
            "error": REFUSED,
        }
        short = await call(
            client, "store_memory", memory_id=f"s-{token}", text="x", embedding=[0.1, 0.2]
        )
        assert short["status"] == "failed"
        assert (
            short["error"] == "DuckdbHotStore.insert: embedding dim mismatch (expected 384, got 2)"
        )
        nested = await call(
            client, "store_memory", memory_id=f"n-{token}", text="x", embedding=[vector]
        )
        assert nested["status"] == "failed"
        assert nested["error"].startswith("1 validation error for HotRecord\nembedding.0\n")
        stored = await call(
            client, "store_memory", memory_id=f"ok-{token}", text="x", embedding=vector,
            metadata={"source": "mahavishnu"},
        )  # fmt: skip
        assert set(stored) == {"status", "memory_id", "stored_at", "embedding_dim", "source"}
        assert (stored["status"], stored["embedding_dim"], stored["source"]) == (
            "stored",
            384,
            "mahavishnu",
        )
        twice = await call(
            client, "store_memory", memory_id=f"ok-{token}", text="x", embedding=vector
        )
        assert twice == {
            "status": "failed",
            "memory_id": f"ok-{token}",
            "error": f'Constraint Error: Duplicate key "conversation_id: ok-{token}" violates primary key constraint.',
        }
        late = await call(
            client, "store_memory", memory_id=f"t-{token}", text="x", embedding=vector,
            metadata={"created_at": "yesterday"},
        )  # fmt: skip
        assert late["error"] == "Invalid isoformat string: 'yesterday'"


async def test_batch_store_reports_completed_partial_and_failed(akosha: Counterpart) -> None:
    token = uuid.uuid4().hex[:12]
    vector = [0.05] * 384
    async with connected(akosha) as client:
        good = [
            {"memory_id": f"g{i}-{token}", "text": f"t{i}", "embedding": vector} for i in range(2)
        ]
        done = await call(client, "batch_store_memories", memories=good)
        assert set(done) == {"status", "total", "stored", "failed", "errors", "stored_at"}
        assert (done["status"], done["total"], done["stored"], done["failed"], done["errors"]) == (
            "completed", 2, 2, 0, [],
        )  # fmt: skip
        mixed = [
            {"memory_id": f"p1-{token}", "text": "t", "embedding": vector},
            {"memory_id": f"p2-{token}", "text": "t"},
            {"text": "no id"},
        ]
        partial = await call(client, "batch_store_memories", memories=mixed)
        assert (partial["status"], partial["stored"], partial["failed"]) == ("partial", 1, 2)
        assert partial["errors"] == [
            {"memory_id": f"p2-{token}", "error": REFUSED},
            {"memory_id": None, "error": "Missing required field (memory_id or text)"},
        ]
        failed = await call(
            client, "batch_store_memories", memories=[{"memory_id": f"f-{token}", "text": "t"}]
        )
        assert (failed["status"], failed["stored"], failed["failed"]) == ("failed", 0, 1)
        empty = await call(client, "batch_store_memories", memories=[])
        assert (empty["status"], empty["total"]) == ("completed", 0)


async def test_search_finds_only_mahavishnu_memories_by_their_exact_text(
    akosha: Counterpart,
) -> None:
    token = uuid.uuid4().hex[:12]
    ours, theirs = f"pool p1 task {token} finished", f"someone else's memory {token}"
    async with connected(akosha) as client:
        vectors = (await call(client, "generate_batch_embeddings", texts=[ours, theirs]))[
            "embeddings"
        ]
        stored = await call(
            client,
            "batch_store_memories",
            memories=[
                {"memory_id": f"ours-{token}", "text": ours, "embedding": vectors[0],
                 "metadata": {"source": "mahavishnu", "created_at": "2026-12-01T20:08:21+00:00"}},
                {"memory_id": f"theirs-{token}", "text": theirs, "embedding": vectors[1],
                 "metadata": {"source": "session-buddy"}},
            ],
        )  # fmt: skip
        assert stored["status"] == "completed"
        found = await call(client, "search_all_systems", query=ours)
        assert (found["query"], found["mode"]) == (ours, "real")
        top = found["results"][0]
        assert (top["conversation_id"], top["content"], top["system_id"]) == (
            f"ours-{token}",
            ours,
            "mahavishnu",
        )
        assert math.isclose(top["similarity"], 1.0, abs_tol=1e-6)
        assert top["timestamp"] == "2026-12-01T20:08:21"
        assert found["total_results"] == len(found["results"])
        nothing = await call(client, "search_all_systems", query=theirs)
        assert nothing["mode"] == "fallback" and nothing["total_results"] == 1
        placeholder = nothing["results"][0]
        assert (placeholder["conversation_id"], placeholder["similarity"]) == ("none", None)
        everything = await call(
            client, "search_all_systems", query=ours, threshold=-1.0, limit=1000
        )
        ids = {r["conversation_id"] for r in everything["results"]}
        assert f"ours-{token}" in ids and f"theirs-{token}" not in ids
        assert {r["system_id"] for r in everything["results"]} == {"mahavishnu"}


async def test_bad_arguments_and_unknown_tools_are_is_error_replies(akosha: Counterpart) -> None:
    async with connected(akosha) as client:
        sql = error_text(await client.call_tool("search_all_systems", {"query": "drop -- it"}))
        assert sql.startswith(
            "Error calling tool 'search_all_systems': Input validation failed: "
            "1 validation error for SearchAllSystemsRequest\nquery\n  Value error, Query contains "
            "suspicious pattern that may indicate SQL injection"
        )
        empty = error_text(await client.call_tool("generate_batch_embeddings", {"texts": []}))
        assert empty.startswith(
            "Error calling tool 'generate_batch_embeddings': Input validation failed: "
            "1 validation error for GenerateBatchEmbeddingsRequest\ntexts\n"
        )
        for tool in ("search_conversations", "aggregate_metrics"):
            assert error_text(await client.call_tool(tool, {})) == f"Unknown tool: '{tool}'"
        extra = error_text(
            await client.call_tool("store_memory", {"memory_id": "m", "text": "x", "tags": []})
        )
        assert extra.startswith(
            "1 validation error for call[store_memory]\ntags\n  Unexpected keyword argument"
        )
