"""Local workers' metrics snapshots: written to a file, read back, summed with another worker's
and served by the reading process's `/metrics` families (shared/metrics/snapshots.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shared.hooks import Finished
from shared.metrics import definitions as d
from shared.metrics.prometheus import PrometheusObserver
from shared.metrics.snapshots import BUCKETS, Snapshot, SnapshotWriter, read_folder

pytestmark = pytest.mark.unit


def worker_counts(pool: str, durations: list[float]) -> PrometheusObserver:
    """An observer fed as a worker's hooks feed it: starts, then completions."""
    observer = PrometheusObserver()
    observer.started(pool, [0.01] * len(durations))
    observer.finished([Finished(pool, "completed", s, s + 0.01) for s in durations])
    observer.retried(pool, 1)
    return observer


def served(observer: PrometheusObserver) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(observer)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_a_snapshot_round_trips_and_sums(tmp_path: Path) -> None:
    one, two = worker_counts("p", [0.002, 0.3]), worker_counts("p", [7.0])
    await SnapshotWriter(tmp_path, "w1", one.snapshot).write()
    await SnapshotWriter(tmp_path, "w2", two.snapshot).write()
    assert Snapshot.from_json((tmp_path / "w1.metrics.json").read_text()) == one.snapshot()

    total = read_folder(tmp_path)
    assert total.counts[("started", "p")] == 3
    assert total.counts[("completed", "p")] == 3
    assert total.counts[("retried", "p")] == 2
    buckets, seconds = total.histograms[(d.TASK_DURATION.name, "p")]
    assert len(buckets) == BUCKETS and sum(buckets) == 3
    assert seconds == pytest.approx(7.302)
    assert buckets[0] == 1  # 0.002 s is in the first bucket (le 0.005)

    # the reading process serves its own counts plus the folder's, per pool
    reader = worker_counts("p", [1.0])
    reader.routed("q", 4)
    reader.add_folder(tmp_path)
    samples = served(reader)
    assert samples[("mahavishnu_tasks_completed_total", (("pool", "p"),))] == 4
    assert samples[("mahavishnu_tasks_routed_total", (("pool", "q"),))] == 4
    assert samples[("mahavishnu_task_duration_seconds_count", (("pool", "p"),))] == 4
    assert samples[("mahavishnu_task_duration_seconds_sum", (("pool", "p"),))] == pytest.approx(
        8.302
    )
    le_half = (("le", "0.5"), ("pool", "p"))
    assert samples[("mahavishnu_task_duration_seconds_bucket", le_half)] == 2
    assert samples[("mahavishnu_task_queue_wait_seconds_count", (("pool", "p"),))] == 4


async def test_a_writer_rewrites_only_on_change_and_bad_files_are_left_out(
    tmp_path: Path,
) -> None:
    observer = worker_counts("p", [0.1])
    writer = SnapshotWriter(tmp_path / "new", "w1", observer.snapshot)
    await writer.write()
    path = tmp_path / "new" / "w1.metrics.json"
    inode = path.stat().st_ino  # a write replaces the file (a new inode)
    await writer.write()
    assert path.stat().st_ino == inode  # unchanged: not written again
    observer.retried("p", 1)
    await writer.write()
    assert read_folder(tmp_path / "new").counts[("retried", "p")] == 2
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["w1.metrics.json"]  # no temp left

    (tmp_path / "new" / "broken.metrics.json").write_text("{not json")
    (tmp_path / "new" / "short.metrics.json").write_text(
        '{"counts": [], "histograms": [["m", "p", [1, 2], 0.5]]}'
    )
    assert read_folder(tmp_path / "new").counts[("completed", "p")] == 1
    assert read_folder(tmp_path / "missing") == Snapshot()
