"""Memory sync and search without Redis or servers: what is sent, how replies are judged, how
hits are merged. The replies below are quoted from the real servers' recorded transcripts
(Session-Buddy 0.36.0, Akosha 0.24.5)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from orchestrator.memory.destinations import (
    EMBEDDING_DIM,
    HEADER_RE,
    SyncFailure,
    ToolCaller,
    artifact_uri,
    batch_stored,
    default_project,
    held_artifacts,
    record_tags,
    record_text,
    reply_text,
    store_memories,
    store_reflections,
    token_from_env,
)
from orchestrator.memory.search import (
    LOCAL,
    SourceHit,
    fuse,
    parse_akosha,
    parse_reflections,
    wanted_sources,
)
from orchestrator.memory.stats import DestinationStats
from shared.config import load_settings
from shared.errors import InvalidRequest
from shared.memory import MemoryRecord

pytestmark = pytest.mark.unit

# --- recorded replies (verbatim from the real servers)
SB_STORED = (
    "💾 Reflection stored successfully!\n"
    "📝 Content: Pool local-1 task 001 finished: refactored the redis stream consumer group\n"
    "🏷️ Tags: pool-task, pool:local-1\n📅 Stored: 2026-12-01 20:08:21\n📁 Project: mahavishnu-pools"
)
SB_QUICK = (
    "🔍 Quick search for: 'redis stream consumer group'\n📊 Found results (showing top 1)\n"
    "📝 Pool local-1 task 001 finished: refactored the redis stream consumer group\n"
    "📁 Project: mahavishnu-pools\n📅 Date: 2026-12-01T20:08:21.477947"
)
SB_BY_SESSION = (
    "📡 Reflections produced by session: 'pool-delegated-1'\n"
    "==================================================\n📊 Found 1 reflection(s)\n"
    "  • id=01a23338f9a474539a96593ec836483c  📅 2026-12-01T20:08:21.668308\n"
    "    📝 Delegated pool task 002 failed with timeout contacting remote MCP server\n"
    "    📁 Project: mahavishnu-pools\n    🔗 Artifact: pool://delegated-1/task/002"
)
AKOSHA_NO_EMBEDDING = {
    "status": "failed",
    "error": "Embedding is required: must be a 384-dimensional vector",
}
AKOSHA_STORED = {"status": "completed", "stored": 2}


def record(task: str = "t-1", pool: str = "p-1", **extra: Any) -> MemoryRecord:
    values: dict[str, Any] = {
        "entry_id": "1-0",
        "task_id": task,
        "pool_id": pool,
        "worker_id": "w-1",
        "status": "completed",
        "prompt": "refactor the redis stream consumer group",
        "output": "done",
        "error": "",
        "duration": 0.5,
        "finished_at": 1_800_000_000.0,
        "tags": ("infra",),
    }
    values.update(extra)
    return MemoryRecord(**values)


class Recorded:
    """Answers tool calls with recorded replies, and keeps the calls."""

    def __init__(self, replies: Mapping[str, Any]) -> None:
        self.replies = dict(replies)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def call(self, tool: str, arguments: Mapping[str, Any] | None = None) -> Any:
        self.calls.append((tool, dict(arguments or {})))
        reply = self.replies[tool]
        return reply(arguments) if callable(reply) else reply


def caller(replies: Mapping[str, Any], **settings: Any) -> tuple[ToolCaller, Recorded]:
    remote = Recorded(replies)
    return ToolCaller(remote, load_settings(**settings)), remote  # type: ignore[arg-type]


def test_project_is_derived_from_the_prefix_within_the_allowed_shape() -> None:
    assert default_project(load_settings(key_prefix="mhv:")) == "mahavishnu-mhv"
    assert default_project(load_settings(key_prefix="team/a#b:")) == "mahavishnu-team-a-b"
    assert default_project(load_settings(memory_sync_project="my.proj")) == "my.proj"
    with pytest.raises(Exception, match="memory_sync_project"):
        load_settings(memory_sync_project="no spaces allowed")


def test_what_is_sent_names_the_task() -> None:
    r = record(tags=("infra", "urgent"))
    body = record_text(r)
    found = HEADER_RE.search(body)
    assert found and (found["task"], found["pool"]) == ("t-1", "p-1")
    assert "refactor the redis stream" in body and "output: done" in body
    assert record_tags(r) == ["mahavishnu", "pool:p-1", "status:completed", "infra", "urgent"]
    assert artifact_uri("p-1", "t-1") == "mahavishnu://p-1/task/t-1"


async def test_a_stored_reflection_is_acked_one_by_one() -> None:
    tools, remote = caller({"store_reflection": SB_STORED})
    acked: list[list[bytes]] = []

    async def ack(ids: list[bytes]) -> None:
        acked.append(ids)

    entries = [(b"1-0", record("t-1")), (b"2-0", record("t-2"))]
    await store_reflections(tools, "proj", "p-1", entries, ack)
    assert acked == [[b"1-0"], [b"2-0"]]
    args = remote.calls[0][1]
    assert args["project"] == "proj" and args["source_session_id"] == "p-1"
    assert args["source_artifact_uri"] == "mahavishnu://p-1/task/t-1"


@pytest.mark.parametrize(
    "reply",
    [
        "Unknown tool: store_reflection",
        {"success": False, "error": "Pool nope not found"},
        "",
    ],
)
async def test_an_unexpected_reply_is_a_failure_never_synced(reply: Any) -> None:
    tools, _ = caller({"store_reflection": reply})
    acked: list[list[bytes]] = []

    async def ack(ids: list[bytes]) -> None:
        acked.append(ids)

    with pytest.raises(SyncFailure, match="did not store task t-1"):
        await store_reflections(tools, "proj", "p-1", [(b"1-0", record())], ack)
    assert acked == []


async def test_records_session_buddy_already_holds_are_not_sent_again() -> None:
    held_reply = SB_BY_SESSION + "\n    🔗 Artifact: mahavishnu://p-1/task/t-1"
    tools, remote = caller({"search_by_source_session": held_reply, "store_reflection": SB_STORED})
    held = await held_artifacts(tools, "p-1", 50)
    assert held == {"mahavishnu://p-1/task/t-1"}  # pool://… belongs to another producer
    acked: list[list[bytes]] = []

    async def ack(ids: list[bytes]) -> None:
        acked.append(ids)

    entries = [(b"1-0", record("t-1")), (b"2-0", record("t-2"))]
    await store_reflections(tools, "proj", "p-1", entries, ack, held=held)
    stored = [a["source_artifact_uri"] for t, a in remote.calls if t == "store_reflection"]
    assert stored == ["mahavishnu://p-1/task/t-2"] and acked == [[b"1-0"], [b"2-0"]]


async def test_akosha_gets_its_own_embeddings_and_a_failed_store_is_a_failure() -> None:
    def embed(args: Mapping[str, Any]) -> dict[str, Any]:
        texts = args["texts"]
        return {"count": len(texts), "embedding_dim": 384, "embeddings": [[0.5] * 384] * len(texts)}

    tools, remote = caller(
        {"generate_batch_embeddings": embed, "batch_store_memories": AKOSHA_STORED}
    )
    acked: list[list[bytes]] = []

    async def ack(ids: list[bytes]) -> None:
        acked.append(ids)

    entries = [(b"1-0", record("t-1")), (b"2-0", record("t-2"))]
    await store_memories(tools, entries, ack)
    memories = remote.calls[1][1]["memories"]
    assert [m["memory_id"] for m in memories] == ["t-1", "t-2"]
    assert all(len(m["embedding"]) == EMBEDDING_DIM for m in memories)
    assert memories[0]["metadata"]["source"] == "mahavishnu"
    assert {"pool", "task", "status", "finished_at"} <= set(memories[0]["metadata"])
    assert acked == [[b"1-0", b"2-0"]]

    failing, _ = caller(
        {"generate_batch_embeddings": embed, "batch_store_memories": AKOSHA_NO_EMBEDDING}
    )
    acked.clear()
    with pytest.raises(SyncFailure, match="Embedding is required"):
        await store_memories(failing, entries, ack)
    short, _ = caller({"generate_batch_embeddings": {"embeddings": [[0.1] * 10, [0.1] * 10]}})
    with pytest.raises(SyncFailure, match="384-float"):
        await store_memories(short, entries, ack)
    assert acked == []


async def test_tool_and_argument_names_are_configurable() -> None:
    tools, remote = caller(
        {"remember": SB_STORED},
        memory_sync_tools={"store_reflection": "remember"},
        memory_sync_tool_args={"store_reflection": {"content": "text"}},
    )

    async def ack(ids: list[bytes]) -> None:
        return None

    await store_reflections(tools, "proj", "p-1", [(b"1-0", record())], ack)
    name, args = remote.calls[0]
    assert name == "remember" and "text" in args and "content" not in args


def test_text_replies_and_search_parsing() -> None:
    assert reply_text({"result": "x"}) == "x" and reply_text({"a": 1}) is None
    assert parse_reflections(SB_QUICK) == []  # another producer's reflection: no task named
    ours = SB_QUICK.replace(
        "📝 Pool local-1", "📝 mahavishnu task t-9 in pool p-2 (completed)\nasked: Pool local-1"
    )
    hits = parse_reflections(ours)
    assert [(h.task_id, h.pool_id, h.status) for h in hits] == [("t-9", "p-2", "completed")]
    with pytest.raises(SyncFailure):
        parse_akosha(AKOSHA_NO_EMBEDDING)
    reply = {
        "results": [
            {"content": "Mock result", "similarity": 0.85, "mode": "fallback"},
            {
                "memory_id": "t-3",
                "text": "x",
                "similarity": 1.0,
                "metadata": {"task": "t-3", "pool": "p"},
            },
        ]
    }
    assert [(h.task_id, h.score) for h in parse_akosha(reply)] == [("t-3", 1.0)]


def test_fusion_ranks_agreement_first_and_keeps_one_hit_per_task() -> None:
    ranked = {
        LOCAL: [SourceHit("a", "p", "", 3.0), SourceHit("b", "p", "", 2.0)],
        "session-buddy": [SourceHit("b", "p", "", 0.0)],
        "akosha": [
            SourceHit("c", "p", "", 1.0),
            SourceHit("b", "p", "", 0.9),
            SourceHit("b", "p", "", 0.1),
        ],
    }
    hits = fuse(ranked, 10)
    assert [h.task_id for h in hits] == ["b", "a", "c"]
    assert hits[0].sources == [LOCAL, "session-buddy", "akosha"]
    assert hits[0].source_scores["akosha"] == 0.9
    assert [h.task_id for h in fuse(ranked, 1)] == ["b"]


def test_sources_are_checked() -> None:
    settings = load_settings(memory_sync_destinations=["akosha"])
    assert wanted_sources("all", settings) == [LOCAL, "akosha"]
    assert wanted_sources("session-buddy", settings) == ["session-buddy"]
    with pytest.raises(InvalidRequest, match="source='everything'"):
        wanted_sources("everything", settings)


def test_destination_totals_add_up() -> None:
    total = DestinationStats()
    total.add(DestinationStats(synced=2, pending=1, lag_s=3.0, last_success=5.0))
    total.add(DestinationStats(synced=1, pending=4, lag_s=1.0, last_success=9.0))
    assert (total.synced, total.pending, total.lag_s, total.last_success) == (3, 5, 3.0, 9.0)


def test_a_resent_akosha_batch_is_held_already() -> None:
    dup = 'Constraint Error: Duplicate key "conversation_id: t-1" violates primary key constraint.'
    assert batch_stored({"status": "completed", "stored": 2}, 2)
    assert batch_stored(
        {"status": "partial", "stored": 1, "errors": [{"memory_id": "t-1", "error": dup}]}, 2
    )
    assert batch_stored(
        {"status": "failed", "stored": 0, "errors": [{"error": dup}, {"error": dup}]}, 2
    )
    other = {"memory_id": "t-2", "error": "Embedding is required: must be a 384-dimensional vector"}
    assert not batch_stored({"status": "partial", "stored": 1, "errors": [other]}, 2)
    assert not batch_stored(AKOSHA_NO_EMBEDDING, 2)
    assert not batch_stored("Unknown tool: batch_store_memories", 2)


def test_unknown_tool_names_are_refused() -> None:
    with pytest.raises(Exception, match=r"memory_sync_tools.*unknown tool.*store_memory"):
        load_settings(memory_sync_tools={"store_memory": "x"})


def test_a_token_comes_from_the_named_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SB_TOKEN_FOR_TEST", "secret-value")
    assert token_from_env("SB_TOKEN_FOR_TEST", "session_buddy_token_env") == "secret-value"
    assert token_from_env(None, "session_buddy_token_env") is None
    with pytest.raises(SyncFailure, match=r"akosha_token_env names .*NOT_SET_HERE"):
        token_from_env("NOT_SET_HERE", "akosha_token_env")
