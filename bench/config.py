"""What one run measures: the scenarios, the systems, the sizes, and where the output goes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
"""The project folder (the parent of `bench/`)."""

SCENARIOS = ("throughput", "latency", "concurrency", "backlog", "fanout", "mixed", "startup")
SYSTEMS = ("raw", "arq", "bullmq", "ours")

DEFAULT_JSON = ROOT / "bench" / "results" / "latest.json"
DEFAULT_MARKDOWN = ROOT / "docs" / "benchmarks.md"
DEFAULT_ARQ_VENV = ROOT / ".mahavishnu" / "bench-arq-venv"
DEFAULT_BULLMQ_DIR = ROOT / ".mahavishnu" / "bench-bullmq"

# Sizes of a full run (scale 1.0). Each is multiplied by --scale, with the floor beside it.
BASE_TASKS = 20_000  # throughput: tasks submitted in batches
BASE_LATENCY = 1_000  # latency: sequential round trips from one client
BASE_CLIENT_ROUNDS = 25  # concurrency: sequential round trips per client
BASE_BACKLOG = 100_000  # backlog: tasks queued before the workers start
BASE_ARQ_TASKS = 4_000  # arq throughput (its default worker polls every 0.5 s: ~200 jobs/s)
BASE_ARQ_LATENCY = 30  # arq round trips (each waits for the worker's 0.5 s poll)
BASE_MIXED = 400  # mixed: tasks of the mixed-duration plan (9 in 10 short, 1 in 10 long)
STARTUP_SPAWNS = 3  # startup: new pools spawned in turn (the median is the figure)
WARMUP = 200  # untimed tasks before each timed throughput/latency figure


@dataclass(frozen=True)
class RunConfig:
    """The options of one run (see `python -m bench --help`)."""

    scale: float = 1.0
    scenarios: tuple[str, ...] = SCENARIOS
    systems: tuple[str, ...] = SYSTEMS
    workers: tuple[int, ...] = (1, 2)
    concurrency: int = 64
    batch: int = 500
    clients: int = 200
    fanout_pools: int = 100
    redis_url: str | None = None
    cluster: bool = False  # on a private local 3-primary Redis Cluster (our system only)
    json_path: Path | None = DEFAULT_JSON
    markdown_path: Path | None = DEFAULT_MARKDOWN
    arq_venv: Path = DEFAULT_ARQ_VENV
    arq_tuned: bool = True
    bullmq_dir: Path = DEFAULT_BULLMQ_DIR
    repeat: int = 3
    rerender: Path | None = None
    scenario_timeout: float = 300.0
    command: str = "python -m bench"
    notes: list[str] = field(default_factory=list)

    def count(self, base: int, floor: int) -> int:
        """`base` scaled by --scale, at least `floor`."""
        return max(floor, round(base * self.scale))

    @property
    def tasks(self) -> int:
        """Tasks of one throughput figure."""
        return self.count(BASE_TASKS, 50)

    @property
    def latency_round_trips(self) -> int:
        """Sequential round trips of one latency figure."""
        return self.count(BASE_LATENCY, 20)

    @property
    def client_rounds(self) -> int:
        """Sequential round trips per client of the concurrency figure."""
        return self.count(BASE_CLIENT_ROUNDS, 2)

    @property
    def backlog_tasks(self) -> int:
        """Tasks queued before the workers start."""
        return self.count(BASE_BACKLOG, 100)

    @property
    def arq_tasks(self) -> int:
        """Jobs of one arq throughput figure."""
        return self.count(BASE_ARQ_TASKS, 50)

    @property
    def arq_latency_round_trips(self) -> int:
        """Sequential round trips of the arq latency figure."""
        return self.count(BASE_ARQ_LATENCY, 5)

    @property
    def arq_tuned_latency_round_trips(self) -> int:
        """Sequential round trips of the tuned-arq latency figure."""
        return self.count(BASE_LATENCY // 5, 10)

    @property
    def mixed_tasks(self) -> int:
        """Tasks of the mixed-duration plan (a multiple of 10: one in ten is long)."""
        return max(40, round(BASE_MIXED * self.scale / 10) * 10)

    @property
    def startup_spawns(self) -> int:
        """New pools of the start-up figure (one per repeat, at most `STARTUP_SPAWNS`)."""
        return max(1, min(STARTUP_SPAWNS, self.repeat))

    @property
    def warmup(self) -> int:
        """Untimed tasks before a timed figure."""
        return min(WARMUP, max(10, self.tasks // 10))

    def wants(self, scenario: str, system: str) -> bool:
        """Whether this run measures `system` in `scenario`."""
        return scenario in self.scenarios and system in self.systems

    def describe(self) -> dict[str, Any]:
        """The sizes and options, for the report."""
        return {
            "scale": self.scale,
            "scenarios": list(self.scenarios),
            "systems": list(self.systems),
            "worker_processes": list(self.workers),
            "worker_concurrency": self.concurrency,
            "submit_batch": self.batch,
            "throughput_tasks": self.tasks,
            "latency_round_trips": self.latency_round_trips,
            "concurrency_clients": self.clients,
            "concurrency_rounds_per_client": self.client_rounds,
            "backlog_tasks": self.backlog_tasks,
            "fanout_pools": self.fanout_pools,
            "arq_tasks": self.arq_tasks,
            "arq_latency_round_trips": self.arq_latency_round_trips,
            "arq_tuned_latency_round_trips": self.arq_tuned_latency_round_trips,
            "mixed_tasks": self.mixed_tasks,
            "startup_spawns": self.startup_spawns,
            "warmup_tasks": self.warmup,
            "throughput_repeats": self.repeat,
        }
