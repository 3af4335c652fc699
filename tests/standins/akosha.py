"""The Akosha 0.24.5 stand-in (lite mode): memories, embeddings and search, JSON text replies.

What the real server does in lite mode (its `mcp/tools/session_buddy_tools.py`,
`mcp/tools/akosha_tools.py`, `mcp/validation.py`, oneiric's DuckDB hot store, and the recorded
transcript):
- `store_memory` / `batch_store_memories` need a 384-float `embedding`: without one the memory
  fails with "Embedding is required: must be a 384-dimensional vector"; another length fails
  with the hot store's dimension message. A memory's `metadata.source` becomes its system id
  (default "unknown"), `metadata.created_at` (ISO) its time. `memory_id` is the primary key: a
  second store of the same id FAILS with DuckDB's duplicate-key message (a re-send is not
  silently accepted). A batch reply is `completed` (all stored), `partial` or `failed`, with the
  failures in `errors`; more than 1000 memories fail as a whole. Failures are `"status":
  "failed"` replies with `is_error` false.
- `generate_embedding` / `generate_batch_embeddings` give deterministic unit vectors of 384
  floats (no model server: `"mode": "fallback"`); the same text always gives the same vector,
  different texts nearly orthogonal ones. `generate_embedding` first collapses whitespace.
- `search_all_systems` embeds the (stripped) query the same way and returns only memories whose
  system id (`metadata.source`) is "mahavishnu", by cosine similarity >= `threshold`, best first:
  the exact stored text scores 1.0, other wordings about 0 — near-exact search only. With no hit
  it answers one placeholder result and `"mode": "fallback"`.
- Bad arguments (empty text or query, a query with an SQL-looking pattern such as `--`, limits
  out of range) are `is_error` replies ("Input validation failed: ...").
The vectors are not bit-identical to the real ones (those come from numpy's generator seeded
the same way); only their properties above are reproduced.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import struct
from datetime import UTC, datetime
from typing import Any, TypeVar

from mcp.server import MCPServer
from pydantic import BaseModel, Field, ValidationError, field_validator

from tests.standins.server import build_server

DIMENSION = 384
Request = TypeVar("Request", bound=BaseModel)
BATCH_LIMIT = 1000
NO_HITS = (
    "No websocket invocations indexed yet. Ensure the WebSocketInvocationsSubscriber is enabled "
    "and Mahavishnu has emitted audit rows."
)
SUSPICIOUS = ("'; --", "' OR '1'='1", "DROP TABLE", "UNION SELECT", "1=1", "--", "/*", "*/",
              "xp_cmdshell", "exec(")  # fmt: skip
SYSTEM_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def fallback_embedding(text: str) -> list[float]:
    """A deterministic unit vector for `text` (seeded by SHA-256, float32 values)."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    vec = [rng.gauss(0.0, 1.0) for _ in range(DIMENSION)]
    norm = math.sqrt(sum(v * v for v in vec))
    return [_float32(v / norm) for v in vec]


def _float32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norms = math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    return dot / norms if norms else 0.0


class GenerateEmbeddingRequest(BaseModel):
    text: str = Field(..., min_length=1, max_length=10_000)

    @field_validator("text")
    @classmethod
    def validate_text(cls, v: str) -> str:
        if "\x00" in v:
            raise ValueError("Text cannot contain null bytes")
        return " ".join(v.split())


class GenerateBatchEmbeddingsRequest(BaseModel):
    texts: list[str] = Field(..., min_length=1, max_length=1000)
    batch_size: int = Field(32, ge=1, le=128)

    @field_validator("texts")
    @classmethod
    def validate_texts(cls, v: list[str]) -> list[str]:
        total = sum(len(text) for text in v)
        if total > 1_000_000:
            raise ValueError(f"Total text size too large: {total:,} characters (max: 1,000,000)")
        for i, text in enumerate(v):
            if not text:
                raise ValueError(f"Text at index {i} is empty")
            if len(text) > 10_000:
                raise ValueError(
                    f"Text at index {i} too long: {len(text)} characters (max: 10,000)"
                )
            if "\x00" in text:
                raise ValueError(f"Text at index {i} contains null bytes")
        return v


class SearchAllSystemsRequest(BaseModel):
    query: str = Field(..., min_length=1, max_length=1_000)
    limit: int = Field(10, ge=1, le=1000)
    threshold: float = Field(0.7, ge=-1.0, le=1.0)
    system_id: str | None = Field(None, max_length=100)

    @field_validator("query")
    @classmethod
    def validate_query(cls, v: str) -> str:
        if "\x00" in v:
            raise ValueError("Query cannot contain null bytes")
        v = v.strip()
        if any(pattern.upper() in v.upper() for pattern in SUSPICIOUS):
            raise ValueError("Query contains suspicious pattern that may indicate SQL injection")
        return v

    @field_validator("system_id")
    @classmethod
    def validate_system_id(cls, v: str | None) -> str | None:
        if v is not None and not SYSTEM_ID.match(v):
            raise ValueError(
                f"Invalid system_id format: '{v}'. System IDs must contain only alphanumeric "
                "characters, hyphens, and underscores"
            )
        return v


def _validated(model: type[Request], **values: Any) -> Request:
    """The request checked as the real server checks it (the same pydantic models)."""
    try:
        return model(**values)
    except ValidationError as exc:
        raise ValueError(f"Input validation failed: {exc}") from None


class HotRecord(BaseModel):
    """Akosha's hot-tier record (the same pydantic model: its validation messages are the real
    ones)."""

    system_id: str
    conversation_id: str
    content: str
    embedding: list[float]
    timestamp: datetime
    metadata: dict[str, Any]


class HotStore:
    """Akosha's in-memory hot store of one stand-in process (lite mode keeps it in memory)."""

    def __init__(self) -> None:
        self.memories: dict[str, HotRecord] = {}

    def store(
        self, memory_id: Any, text: Any, embedding: Any, metadata: dict[str, Any] | None
    ) -> dict[str, Any]:
        if not memory_id:
            error = "Invalid memory_id: must be non-empty string"
            return {"status": "failed", "memory_id": memory_id, "error": error}
        if not text:
            error = "Invalid text: must be non-empty string"
            return {"status": "failed", "memory_id": memory_id, "error": error}
        if embedding is None:
            error = "Embedding is required: must be a 384-dimensional vector"
            return {"status": "failed", "memory_id": memory_id, "error": error}
        try:
            memory = self._memory(str(memory_id), str(text), embedding, metadata)
        except (AttributeError, TypeError, ValueError) as exc:
            return {"status": "failed", "memory_id": memory_id, "error": str(exc)}
        self.memories[memory.conversation_id] = memory
        return {
            "status": "stored",
            "memory_id": memory_id,
            "stored_at": datetime.now(UTC).isoformat(),
            "embedding_dim": len(embedding),
            "source": memory.system_id,
        }

    def _memory(
        self, memory_id: str, text: str, embedding: Any, metadata: dict[str, Any] | None
    ) -> HotRecord:
        """The record as the real server builds and inserts it, failing where it fails."""
        meta = metadata or {}
        normalized = {
            "source": meta.get("source", "unknown"),
            "original_id": meta.get("original_id"),
            "type": meta.get("type", "session_memory"),
            "ingestion_method": "http_push",
        }
        if meta.get("correlation_id"):
            normalized["correlation_id"] = meta["correlation_id"]
        when = (
            datetime.fromisoformat(meta.get("created_at", datetime.now(UTC).isoformat()))
            if metadata
            else datetime.now(UTC)
        )
        record = HotRecord(
            system_id=normalized["source"],
            conversation_id=memory_id,
            content=text,
            embedding=embedding,
            timestamp=when,
            metadata=normalized,
        )
        if len(record.embedding) != DIMENSION:
            raise ValueError(
                f"DuckdbHotStore.insert: embedding dim mismatch "
                f"(expected {DIMENSION}, got {len(record.embedding)})"
            )
        if memory_id in self.memories:
            raise ValueError(
                f'Constraint Error: Duplicate key "conversation_id: {memory_id}" violates '
                "primary key constraint."
            )
        if record.timestamp.tzinfo is not None:  # stored naive UTC, as DuckDB's TIMESTAMP
            record.timestamp = record.timestamp.astimezone(UTC).replace(tzinfo=None)
        return record

    def search(self, query: list[float], limit: int, threshold: float) -> list[dict[str, Any]]:
        scored = [
            (cosine(query, memory.embedding), memory)
            for memory in self.memories.values()
            if memory.system_id == "mahavishnu"
        ]
        scored = [(score, memory) for score, memory in scored if score >= threshold]
        scored.sort(key=lambda pair: pair[0], reverse=True)
        return [
            {
                "system_id": memory.system_id,
                "conversation_id": memory.conversation_id,
                "content": memory.content,
                "similarity": score,
                "timestamp": memory.timestamp.isoformat(),
            }
            for score, memory in scored[:limit]
        ]


def akosha_tools(store: HotStore) -> list[Any]:
    """The tools the project calls, over `store`."""

    async def store_memory(
        memory_id: str,
        text: str,
        embedding: list[float] | list[list[float]] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return store.store(memory_id, text, embedding, metadata)

    async def batch_store_memories(memories: list[dict[str, Any]]) -> dict[str, Any]:
        if len(memories) > BATCH_LIMIT:
            return {
                "status": "failed",
                "total": len(memories),
                "stored": 0,
                "failed": len(memories),
                "error": f"Batch size exceeds maximum of {BATCH_LIMIT} memories",
            }
        stored = 0
        errors: list[dict[str, Any]] = []
        for memory in memories:
            memory_id, text = memory.get("memory_id"), memory.get("text")
            if not memory_id or not text:
                errors.append(
                    {"memory_id": memory_id, "error": "Missing required field (memory_id or text)"}
                )
                continue
            result = store.store(memory_id, text, memory.get("embedding"), memory.get("metadata"))
            if result["status"] == "stored":
                stored += 1
            else:
                errors.append({"memory_id": memory_id, "error": result.get("error")})
        return {
            "status": "completed" if not errors else "partial" if stored else "failed",
            "total": len(memories),
            "stored": stored,
            "failed": len(errors),
            "errors": errors,
            "stored_at": datetime.now(UTC).isoformat(),
        }

    async def generate_embedding(text: str) -> dict[str, Any]:
        text = _validated(GenerateEmbeddingRequest, text=text).text
        vector = fallback_embedding(text)
        return {"text": text, "embedding_dim": len(vector), "embedding": vector, "mode": "fallback"}

    async def generate_batch_embeddings(texts: list[str], batch_size: int = 32) -> dict[str, Any]:
        texts = _validated(GenerateBatchEmbeddingsRequest, texts=texts, batch_size=batch_size).texts
        vectors = [fallback_embedding(text) for text in texts]
        return {
            "count": len(vectors),
            "embedding_dim": len(vectors[0]) if vectors else 0,
            "embeddings": vectors,
            "mode": "fallback",
        }

    async def search_all_systems(
        query: str, limit: int = 10, threshold: float = 0.7, system_id: str | None = None
    ) -> dict[str, Any]:
        request = _validated(
            SearchAllSystemsRequest, query=query, limit=limit, threshold=threshold,
            system_id=system_id,
        )  # fmt: skip
        results = store.search(fallback_embedding(request.query), request.limit, request.threshold)
        mode = "real" if results else "fallback"
        if not results:
            results = [
                {
                    "system_id": "mahavishnu",
                    "conversation_id": "none",
                    "content": NO_HITS,
                    "similarity": None,
                    "timestamp": datetime.now(UTC).isoformat(),
                }
            ]
        return {
            "query": request.query,
            "total_results": len(results),
            "results": results,
            "mode": mode,
        }

    return [
        store_memory,
        batch_store_memories,
        generate_embedding,
        generate_batch_embeddings,
        search_all_systems,
    ]


def build() -> MCPServer:
    """An Akosha stand-in with no memories."""
    store = HotStore()

    async def reset() -> None:
        store.memories.clear()

    return build_server("akosha", akosha_tools(store), reset)
