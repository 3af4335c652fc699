"""The structured results of the MCP facade's tools: stable field names, one model per answer.

An execute result keeps the original's keys (pool_id, worker_id, status, output, error,
duration) and adds task_id, attempts, exit_code, plus `done` and a human `message` (for a task
still running when the call stopped waiting, for a dead letter, for a failure).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.arq_options import ArqOptions
from shared.config import redact_url
from shared.models import PoolInfo, PoolType, TaskResult, TaskStatus


class ExecuteResult(BaseModel):
    """The outcome (or current state) of one task."""

    task_id: str
    pool_id: str | None = None
    worker_id: str | None = None
    status: str = Field(
        description="pending, queued, running, retrying (not done) or "
        "completed, failed, cancelled, dead_lettered (done)"
    )
    output: Any = None
    error: str | None = None
    duration: float = 0.0
    attempts: int = 0
    exit_code: int | None = None
    done: bool = Field(description="true when the status is final")
    message: str = Field(default="", description="what the caller should know or do next")
    started_at: float | None = None
    finished_at: float | None = None

    @classmethod
    def from_result(cls, result: TaskResult, message: str = "") -> ExecuteResult:
        """Wrap a TaskResult, explaining failures, dead letters and unfinished tasks."""
        status = result.status
        if not message:
            if status is TaskStatus.DEAD_LETTERED:
                reason = result.error or "no reason given"
                # workers and reclaimers write the error as "dead-lettered after N attempt(s); ..."
                if not reason.startswith("dead-lettered"):
                    reason = f"dead-lettered after {result.attempts} attempt(s): {reason}"
                message = f"{reason}; see pool_dead_letters"
            elif status is TaskStatus.FAILED:
                message = f"failed: {result.error or 'no reason given'}"
            elif status is TaskStatus.CANCELLED:
                message = f"cancelled: {result.error or 'on request'}"
            elif not status.is_final:
                message = f"still {status}; poll task_result with task_id={result.task_id!r}"
                if status is TaskStatus.PENDING:
                    message += (
                        " (not routed yet: no eligible pool has room, or no orchestrator is "
                        "running; pool_health shows both)"
                    )
        return cls(
            task_id=result.task_id,
            pool_id=result.pool_id,
            worker_id=result.worker_id,
            status=str(status),
            output=result.output,
            error=result.error,
            duration=result.duration,
            attempts=result.attempts,
            exit_code=result.exit_code,
            done=status.is_final,
            message=message,
            started_at=result.started_at,
            finished_at=result.finished_at,
        )


class TaskSubmitted(BaseModel):
    """A task queued without waiting."""

    task_id: str
    status: str
    pool_id: str | None = Field(default=None, description="the pool, when sent to one directly")
    routed: bool = Field(description="true when the orchestrators pick the pool")
    message: str = ""


class TaskCancelResult(BaseModel):
    """What a cancel request did."""

    task_id: str
    previous_status: str
    status: str
    cancelled: bool = Field(description="true when the task is (or will be) stopped")
    message: str


class PoolSummary(BaseModel):
    """One pool as pool_list shows it."""

    pool_id: str
    name: str
    pool_type: str
    worker_type: str
    status: str
    min_workers: int
    max_workers: int
    target_workers: int
    workers: int = Field(description="workers with a live heartbeat at the last supervision tick")
    concurrency: int
    labels: dict[str, str]
    auto_scale: bool
    created_at: float
    detail: str = ""
    arq_queue: str | None = Field(
        default=None, description="arq pools: the arq queue and the Redis it is on"
    )
    remote_url: str = Field(default="", description="a delegated pool: its remote MCP server")
    remote_kind: str = Field(default="", description="session-buddy, mahavishnu or tool")
    remote_health: str = Field(default="", description="'ok', or why the remote does not answer")

    @classmethod
    def from_info(cls, info: PoolInfo) -> PoolSummary:
        """Summarise a PoolInfo."""
        spec = info.spec
        return cls(
            pool_id=spec.id,
            name=spec.name,
            pool_type=str(spec.pool_type),
            worker_type=str(spec.worker_type),
            status=str(info.status),
            min_workers=spec.min_workers,
            max_workers=spec.max_workers,
            target_workers=info.target_workers,
            workers=info.load.workers,
            concurrency=spec.concurrency,
            labels=spec.labels,
            auto_scale=spec.auto_scale,
            created_at=info.created_at,
            detail=info.detail,
            arq_queue=(
                ArqOptions.model_validate(spec.options).where
                if spec.pool_type is PoolType.ARQ
                else None
            ),
            remote_url=redact_url(spec.remote.url) if spec.remote else "",
            remote_kind=str(spec.remote.kind) if spec.remote else "",
            remote_health=info.remote_health,
        )


class PoolListResult(BaseModel):
    """Every live pool."""

    count: int
    pools: list[PoolSummary]


class SpawnResult(BaseModel):
    """A pool that was asked for (and, when waited for, is running)."""

    pool_id: str
    name: str
    pool_type: str
    worker_type: str
    status: str
    min_workers: int
    max_workers: int
    message: str = ""


class PoolMetrics(BaseModel):
    """A pool's load metrics (from its load hash, written by the supervising orchestrator)."""

    pool_id: str
    name: str
    status: str
    workers: int
    target_workers: int
    capacity: int
    in_flight: int
    queued: int
    completed: int
    failed: int
    avg_ms: float = Field(description="mean duration of completed tasks, in milliseconds")
    load: float | None = Field(description="(in_flight + queued) / capacity; null: no capacity")
    updated_at: float

    @classmethod
    def from_info(cls, info: PoolInfo) -> PoolMetrics:
        """The metrics of a PoolInfo."""
        load = info.load
        return cls(
            pool_id=info.spec.id,
            name=info.spec.name,
            status=str(info.status),
            workers=load.workers,
            target_workers=info.target_workers,
            capacity=load.capacity,
            in_flight=load.in_flight,
            queued=load.queued,
            completed=load.completed,
            failed=load.failed,
            avg_ms=load.avg_ms,
            load=None if math.isinf(load.load) else round(load.load, 4),
            updated_at=load.updated_at,
        )


class MonitorTotals(BaseModel):
    """Sums over the monitored pools."""

    pools: int
    workers: int
    in_flight: int
    queued: int
    completed: int
    failed: int
    avg_ms: float


class MemorySyncModel(BaseModel):
    """Memory sync of one destination (for one pool, or summed over pools)."""

    synced: int
    pending: int
    lost: int = Field(description="trimmed from the memory stream before the service took them")
    skipped: int = Field(description="copies of shared results (their own pool syncs them)")
    lag_s: float = Field(description="age of the oldest record not yet synced, in seconds")
    last_success: float | None
    last_error: str = ""
    last_error_at: float | None = None


class PoolMemoryModel(BaseModel):
    """A pool's memory stream and its sync per destination."""

    pool_id: str
    records: int
    bytes: int
    last_sync: float | None
    destinations: dict[str, MemorySyncModel]


class MonitorResult(BaseModel):
    """Metrics per pool plus totals."""

    pools: list[PoolMetrics]
    totals: MonitorTotals
    memory_sync: dict[str, MemorySyncModel] = Field(
        default_factory=dict, description="per destination (session-buddy, akosha), all pools"
    )
    memory: list[PoolMemoryModel] = Field(
        default_factory=list, description="per pool: records, bytes, sync per destination"
    )


class ScaleResult(BaseModel):
    """A scale request."""

    pool_id: str
    target_workers: int
    previous_target: int
    status: str
    message: str = ""


class CloseResult(BaseModel):
    """A close request for one pool."""

    pool_id: str
    status: str
    closed: bool = Field(description="false while the pool's workers are still draining")
    message: str = ""


class CloseAllResult(BaseModel):
    """A close request for every live pool."""

    count: int
    pools: list[CloseResult]


class WorkerHealth(BaseModel):
    """One live worker (fields the health report adds later are passed through)."""

    model_config = ConfigDict(extra="allow")

    in_flight: int = 0
    status: str = ""
    last_seen_s: float = 0.0
    host: str = ""
    pid: str = ""


class PoolHealth(BaseModel):
    """One pool's health: running with at least one live worker heartbeat."""

    model_config = ConfigDict(extra="allow")

    name: str = ""
    status: str = ""
    healthy: bool = False
    live_workers: int = 0
    target_workers: int = 0
    detail: str = ""
    workers: dict[str, WorkerHealth] = Field(default_factory=dict)


class HealthResult(BaseModel):
    """Health of the broker, the orchestrators and every pool."""

    model_config = ConfigDict(extra="allow")

    healthy: bool
    broker: dict[str, Any]
    orchestrators: list[dict[str, Any]]
    pools: dict[str, PoolHealth]


class MemoryHitModel(BaseModel):
    """One finished task found by one or more sources, and its fused score."""

    task_id: str
    pool_id: str
    worker_id: str = ""
    status: str
    prompt: str = ""
    output: str = ""
    error: str = ""
    duration: float = 0.0
    finished_at: float = 0.0
    tags: list[str] = Field(default_factory=list)
    score: float = Field(description="reciprocal-rank fusion over the sources that found it")
    entry_id: str = ""
    sources: list[str] = Field(
        default_factory=list, description="local, session-buddy, akosha: who found it"
    )
    source_scores: dict[str, float] = Field(
        default_factory=dict, description="each source's own score (BM25, similarity; 0: none)"
    )
    text: str = Field(default="", description="what the source holds (local: the prompt)")


class MemorySearchResult(BaseModel):
    """Ranked memory records."""

    query: str
    count: int
    hits: list[MemoryHitModel]
    pool_ids: list[str] = Field(description="the pools searched")
    scanned: int = Field(description="how many local records were read and ranked")
    sources: list[str] = Field(default_factory=list, description="the sources searched")
    warnings: list[str] = Field(
        default_factory=list, description="sources left out (down, failing) and why"
    )


class DeadLetterModel(BaseModel):
    """One dead-letter entry."""

    entry_id: str
    task_id: str
    pool_id: str
    reason: str
    attempts: int
    at: float
    requeueable: bool
    requeue_problem: str = Field(default="", description="why it cannot be requeued")
    history: list[str] = Field(default_factory=list)


class DeadLettersResult(BaseModel):
    """The dead-letter stream (newest first), or the outcome of a requeue."""

    action: str
    total: int = Field(description="entries in the dead-letter stream")
    entries: list[DeadLetterModel]
    requeued_task_id: str | None = None
    requeued_entry_id: str | None = None
    message: str = ""
