"""The two memory services and how a memory record is sent to each (over MCP).

- **Session-Buddy** (`store_reflection`, one call per record): `content` is a header naming the
  task, then what was asked and a bounded output; `tags` carry the pool, status and the task's
  own tags; `project` (`memory_sync_project`, default derived from `key_prefix`);
  `source_session_id` the pool id; `source_artifact_uri` `mahavishnu://POOL/task/TASK`. Its
  replies are text: only one saying "Reflection stored successfully" counts as stored.
- **Akosha** (`generate_batch_embeddings`, then `batch_store_memories`, one call each per
  batch): `memory_id` is the task id (a re-send overwrites, it does not duplicate), 384-float
  embeddings from Akosha itself, `metadata.source = "mahavishnu"` plus pool, task, status and
  times. A reply with `"status": "failed"`, or any reply that is not a completed store of the
  whole batch, is a failure — except memories refused as duplicate keys: Akosha holds those
  already (a re-sent batch), so they count as stored.

Tool names and argument names are configurable (`memory_sync_tools`: our name -> theirs;
`memory_sync_tool_args`: tool -> our argument -> theirs); `ToolCaller` applies both.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from orchestrator.mcp.client import RemoteMCP
from shared.config import Settings
from shared.errors import RemoteToolError
from shared.memory import MemoryRecord

SESSION_BUDDY = "session-buddy"
AKOSHA = "akosha"
DESTINATIONS = (SESSION_BUDDY, AKOSHA)
EMBEDDING_DIM = 384
STORED_MARKER = "Reflection stored successfully"
SOURCE = "mahavishnu"
DUPLICATE = "Duplicate key"  # Akosha's refusal of a memory_id it holds already
PROJECT_RE = re.compile(r"^[a-zA-Z0-9._-]{1,128}$")
HEADER_RE = re.compile(
    r"mahavishnu task (?P<task>[A-Za-z0-9._:-]+) in pool (?P<pool>[A-Za-z0-9._:-]+)"
)
ARTIFACT_RE = re.compile(r"mahavishnu://(?P<pool>[^/\s]+)/task/(?P<task>[^\s]+)")
PROMPT_CHARS = 2000  # of what was asked, in the text sent (the output is bounded already)

Ack = Callable[[list[bytes]], Awaitable[None]]


class SyncFailure(Exception):
    """A destination did not take a record or a batch; the message says what it answered."""


def default_project(settings: Settings) -> str:
    """Session-Buddy's `project`: configured, else `mahavishnu-<key prefix>` made to fit
    `^[a-zA-Z0-9._-]{1,128}$`."""
    if settings.memory_sync_project:
        return settings.memory_sync_project
    cleaned = re.sub(r"[^a-zA-Z0-9._-]+", "-", settings.key_prefix).strip("-")
    return ("mahavishnu-" + cleaned if cleaned else "mahavishnu")[:128]


def artifact_uri(pool_id: str, task_id: str) -> str:
    """The stable URI of a task, as Session-Buddy keeps it."""
    return f"mahavishnu://{pool_id}/task/{task_id}"


def record_text(record: MemoryRecord) -> str:
    """What a service stores of a record: a header naming the task (search results are mapped
    back to tasks by it), what was asked, and the output or error."""
    lines = [
        f"mahavishnu task {record.task_id} in pool {record.pool_id} ({record.status})",
        f"asked: {record.prompt[:PROMPT_CHARS]}",
    ]
    if record.output:
        lines.append(f"output: {record.output}")
    if record.error:
        lines.append(f"error: {record.error}")
    return "\n".join(lines)


def record_tags(record: MemoryRecord) -> list[str]:
    """Pool, status and the task's own tags."""
    return ["mahavishnu", f"pool:{record.pool_id}", f"status:{record.status}", *record.tags]


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp or time.time(), UTC).isoformat()


def token_from_env(name: str | None, setting: str) -> str | None:
    """The bearer token held in the environment variable `name` (a setting names the variable,
    so the token never sits in a settings file)."""
    if not name:
        return None
    value = os.environ.get(name)
    if not value:
        raise SyncFailure(f"{setting} names the environment variable {name}, which is not set")
    return value


class ToolCaller:
    """Calls a service's tools under their configured names and argument names."""

    def __init__(self, remote: RemoteMCP, settings: Settings) -> None:
        self.remote = remote
        self._names = settings.memory_sync_tools
        self._args = settings.memory_sync_tool_args

    def name(self, tool: str) -> str:
        return self._names.get(tool, tool)

    async def call(self, tool: str, arguments: Mapping[str, Any]) -> Any:
        renames = self._args.get(tool, {})
        mapped = {renames.get(k, k): v for k, v in arguments.items()}
        try:
            return await self.remote.call(self.name(tool), mapped)
        except RemoteToolError as exc:
            raise SyncFailure(str(exc)) from None


def connect(settings: Settings, destination: str) -> RemoteMCP:
    """A (not yet opened) MCP session with a destination."""
    if destination == SESSION_BUDDY:
        url = settings.session_buddy_pool_url
        token = token_from_env(settings.session_buddy_token_env, "session_buddy_token_env")
    else:
        url = settings.akosha_url
        token = token_from_env(settings.akosha_token_env, "akosha_token_env")
    return RemoteMCP(url, token=token, timeout=settings.memory_sync_timeout)


def reply_text(reply: Any) -> str | None:
    """A text reply: the text itself, or the `{"result": text}` an SDK server wraps a string
    return value in when it declares an output schema; None for anything else."""
    if isinstance(reply, str):
        return reply
    if isinstance(reply, dict) and set(reply) == {"result"} and isinstance(reply["result"], str):
        return reply["result"]
    return None


def _shown(reply: Any) -> str:
    shown = reply if isinstance(reply, str) else repr(reply)
    return " ".join(shown.split())[:300]


# ----------------------------------------------------------------------------- Session-Buddy


async def store_reflections(
    caller: ToolCaller,
    project: str,
    pool_id: str,
    entries: Sequence[tuple[bytes, MemoryRecord]],
    ack: Ack,
    *,
    held: set[str] = frozenset(),  # type: ignore[assignment]
) -> None:
    """Store each record, acknowledging it at once (so a crash re-sends at most the one in
    flight); records whose artifact URI Session-Buddy already holds (`held`) are only acked.
    Raises SyncFailure at the first record it does not take; the rest stay pending."""
    for entry_id, record in entries:
        uri = artifact_uri(record.pool_id, record.task_id)
        if uri in held:
            await ack([entry_id])
            continue
        reply = await caller.call(
            "store_reflection",
            {
                "content": record_text(record),
                "tags": record_tags(record),
                "project": project,
                "source_session_id": pool_id,
                "source_artifact_uri": uri,
            },
        )
        answer = reply_text(reply)
        if answer is None or STORED_MARKER not in answer:
            raise SyncFailure(
                f"{caller.name('store_reflection')} did not store task {record.task_id}: "
                f"it answered {_shown(reply)}"
            )
        await ack([entry_id])


async def held_artifacts(caller: ToolCaller, pool_id: str, limit: int) -> set[str]:
    """Artifact URIs Session-Buddy already holds for the pool's most recent reflections (its
    `search_by_source_session` is an index look-up): checked before sending entries delivered
    before (a retry, a dead orchestrator's). Empty when the look-up fails (then they are sent)."""
    try:
        reply = await caller.call(
            "search_by_source_session", {"session_id": pool_id, "limit": limit}
        )
    except SyncFailure:
        return set()
    answer = reply_text(reply)
    if answer is None:
        return set()
    return {f"mahavishnu://{m['pool']}/task/{m['task']}" for m in ARTIFACT_RE.finditer(answer)}


# ------------------------------------------------------------------------------------ Akosha


async def store_memories(
    caller: ToolCaller, entries: Sequence[tuple[bytes, MemoryRecord]], ack: Ack
) -> None:
    """Embed the batch with Akosha's own embedder, store it in one call, then acknowledge it.
    Raises SyncFailure when either call does not answer as it should."""
    if not entries:
        return
    texts = [record_text(record) for _, record in entries]
    reply = await caller.call("generate_batch_embeddings", {"texts": texts})
    vectors = reply.get("embeddings") if isinstance(reply, dict) else None
    if (
        not isinstance(vectors, list)
        or len(vectors) != len(texts)
        or any(not isinstance(v, list) or len(v) != EMBEDDING_DIM for v in vectors)
    ):
        raise SyncFailure(
            f"{caller.name('generate_batch_embeddings')} did not return {len(texts)} "
            f"{EMBEDDING_DIM}-float embeddings: it answered {_shown(reply)}"
        )
    memories = [
        {
            "memory_id": record.task_id,
            "text": body,
            "embedding": vector,
            "metadata": {
                "source": SOURCE,
                "pool": record.pool_id,
                "task": record.task_id,
                "status": record.status,
                "worker": record.worker_id,
                "tags": list(record.tags),
                "duration": record.duration,
                "finished_at": iso(record.finished_at),
                "created_at": iso(record.finished_at),
                "artifact_uri": artifact_uri(record.pool_id, record.task_id),
            },
        }
        for (_, record), body, vector in zip(entries, texts, vectors, strict=True)
    ]
    reply = await caller.call("batch_store_memories", {"memories": memories})
    if not batch_stored(reply, len(memories)):
        raise SyncFailure(
            f"{caller.name('batch_store_memories')} did not store the batch of "
            f"{len(memories)}: it answered {_shown(reply)}"
        )
    await ack([entry_id for entry_id, _ in entries])


def batch_stored(reply: Any, count: int) -> bool:
    """Whether Akosha holds every memory of the batch: all stored now, or refused only because
    it holds that `memory_id` already (a re-sent batch: its memory ids are primary keys)."""
    if not isinstance(reply, dict):
        return False
    status, stored = reply.get("status"), reply.get("stored")
    if status == "completed":
        return stored is None or stored == count
    if status not in ("partial", "failed") or not isinstance(stored, int):
        return False
    errors = reply.get("errors")
    if not isinstance(errors, list) or stored + len(errors) != count:
        return False
    return all(isinstance(e, dict) and DUPLICATE in str(e.get("error", "")) for e in errors)
