"""Task counters and histograms of local workers, handed to their orchestrator's `/metrics`
through files (as multi-process Prometheus exporters do).

The local workers an orchestrator starts share its host, so they serve no port of their own.
When the orchestrator serves `/metrics`, each of them gets a folder (the
`MAHAVISHNU_WORKER_METRICS_DIR` variable), counts with the same observer as any process, and
writes a snapshot of its counts to its own file there on its heartbeat (at most once per
heartbeat interval, only when something changed) and at exit; the file is replaced atomically.
The orchestrator adds every file of the folder to its own families when scraped. A worker's file
stays after it exits, so its counts keep counting (a counter never goes down).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.metrics import definitions as d

log = logging.getLogger("mahavishnu.metrics")
_WRITES = itertools.count()

SUFFIX = ".metrics.json"
BUCKETS = len(d.DURATION_BUCKETS) + 1  # bucket counts of a histogram, the last above every bound


@dataclass
class Snapshot:
    """Counts as plain numbers: `counts[(event, pool)]` (events of `definitions.TASK_COUNTERS`)
    and `histograms[(metric name, pool)] = (count per bucket, not cumulative; sum)`."""

    counts: dict[tuple[str, str], float] = field(default_factory=dict)
    histograms: dict[tuple[str, str], tuple[list[int], float]] = field(default_factory=dict)

    def add(self, other: Snapshot) -> None:
        """Add `other`'s counts to these."""
        for key, value in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + value
        for key, (buckets, total) in other.histograms.items():
            mine = self.histograms.get(key)
            if mine is None:
                self.histograms[key] = (list(buckets), total)
            else:
                summed = [a + b for a, b in zip(mine[0], buckets, strict=True)]
                self.histograms[key] = (summed, mine[1] + total)

    def to_json(self) -> str:
        return json.dumps(
            {
                "counts": [[event, pool, value] for (event, pool), value in self.counts.items()],
                "histograms": [
                    [metric, pool, buckets, total]
                    for (metric, pool), (buckets, total) in self.histograms.items()
                ],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        """The snapshot `to_json` wrote; ValueError (or KeyError, TypeError) when it is not one."""
        data: dict[str, Any] = json.loads(text)
        snapshot = cls()
        for event, pool, value in data["counts"]:
            snapshot.counts[(str(event), str(pool))] = float(value)
        for metric, pool, buckets, total in data["histograms"]:
            if len(buckets) != BUCKETS:
                raise ValueError(f"{metric} has {len(buckets)} buckets, not {BUCKETS}")
            snapshot.histograms[(str(metric), str(pool))] = ([int(b) for b in buckets], total)
        return snapshot


def write_snapshot(folder: Path, name: str, snapshot: Snapshot) -> Path:
    """Replace `folder/<name>.metrics.json` by `snapshot` atomically (a temporary file renamed:
    a reader sees the old file or the new one, never half of one)."""
    path = folder / f"{name}{SUFFIX}"
    # unique per write: a write cancelled mid-thread may still be running beside the next one
    temporary = folder / f".{name}.{os.getpid()}.{next(_WRITES)}.tmp"
    temporary.write_text(snapshot.to_json(), encoding="utf-8")
    os.replace(temporary, path)
    return path


def read_folder(folder: Path) -> Snapshot:
    """The sum of every snapshot in `folder` (a missing folder: none). A file that cannot be
    read is left out with a warning: a scrape never fails on one."""
    total = Snapshot()
    try:
        paths = sorted(folder.glob(f"*{SUFFIX}"))
    except OSError:
        return total
    for path in paths:
        try:
            total.add(Snapshot.from_json(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("metrics snapshot %s left out: %s", path, exc)
    return total


class SnapshotWriter:
    """Writes one worker's counts (`source()`, e.g. PrometheusObserver.snapshot) to its file
    in `folder` when they changed."""

    def __init__(self, folder: Path, name: str, source: Callable[[], Snapshot]) -> None:
        self.folder, self.name = folder, name
        self._source = source
        self._written: Snapshot | None = None

    async def write(self) -> None:
        """Write the snapshot if it changed since the last write, in a thread (the worker's
        event loop never waits on the disk; an OSError is logged: the worker's work never
        depends on its metrics)."""
        snapshot = self._source()  # taken in the loop: the counts it reads are the loop's
        if snapshot == self._written:
            return
        try:
            await asyncio.to_thread(self._write, snapshot)
        except OSError as exc:
            log.warning("cannot write metrics snapshot to %s: %s", self.folder, exc)
            return
        self._written = snapshot

    def _write(self, snapshot: Snapshot) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_snapshot(self.folder, self.name, snapshot)
