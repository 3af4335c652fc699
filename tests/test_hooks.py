"""The hooks and the Prometheus observer, without Redis: what a batch of events turns into."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shared.hooks import Finished, Hooks, Observer, PoolFigures
from shared.metrics.prometheus import Metrics

pytestmark = pytest.mark.unit


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_no_observer_means_no_work() -> None:
    hooks = Hooks()
    assert not hooks
    hooks.started("p", [0.1])  # nothing listens: nothing happens
    observer = Observer()
    hooks.add(observer)
    hooks.add(observer)
    assert hooks and hooks.observers == [observer]
    hooks.remove(observer)
    assert not hooks


def test_a_failing_observer_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Observer):
        def routed(self, pool: str, count: int) -> None:
            raise RuntimeError("observer bug")

    seen: list[int] = []

    class Counting(Observer):
        def routed(self, pool: str, count: int) -> None:
            seen.append(count)

    hooks = Hooks()
    hooks.add(Broken())
    hooks.add(Counting())
    with caplog.at_level(logging.ERROR, logger="mahavishnu.hooks"):
        hooks.routed("p", 3)
    assert seen == [3]
    assert "observer Broken failed in routed" in caplog.text


def test_prometheus_observer_counts_by_pool() -> None:
    metrics = Metrics()
    hooks = Hooks()
    hooks.add(metrics.observer)
    hooks.submitted("(routed)", 5)
    hooks.routed("p1", 4)
    hooks.started("p1", [0.5, 1.5, -0.1])  # a clock step back counts as 0
    hooks.finished(
        [
            Finished("p1", "completed", 0.2, 1.0),
            Finished("p1", "completed", 0.3, None),
            Finished("p1", "dead_lettered", 0.1, 3.0),
            Finished("(none)", "failed", 0.0, 60.0),
        ]
    )
    hooks.retried("p1", 2)
    hooks.reclaimed("p1", 1)
    hooks.pools([PoolFigures("p1", "running", 7, 3, 2, 1, 0, 8, 10, 1)])
    hooks.memory_sync("akosha", 12.5)
    got = samples(metrics)

    def v(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert v("mahavishnu_tasks_submitted_total", pool="(routed)") == 5
    assert v("mahavishnu_tasks_routed_total", pool="p1") == 4
    assert v("mahavishnu_tasks_started_total", pool="p1") == 3
    assert v("mahavishnu_task_queue_wait_seconds_count", pool="p1") == 3
    assert v("mahavishnu_task_queue_wait_seconds_sum", pool="p1") == 2.0
    assert v("mahavishnu_tasks_completed_total", pool="p1") == 2
    assert v("mahavishnu_tasks_dead_lettered_total", pool="p1") == 1
    assert v("mahavishnu_tasks_failed_total", pool="(none)") == 1
    assert v("mahavishnu_task_duration_seconds_count", pool="p1") == 3
    assert v("mahavishnu_task_end_to_end_seconds_count", pool="p1") == 2
    assert v("mahavishnu_tasks_retried_total", pool="p1") == 2
    assert v("mahavishnu_tasks_reclaimed_total", pool="p1") == 1
    assert v("mahavishnu_pool_backlog", pool="p1") == 7
    assert v("mahavishnu_pool_workers", pool="p1", kind="local") == 2
    assert v("mahavishnu_pool_workers", pool="p1", kind="external") == 1
    assert v("mahavishnu_pool_status", pool="p1", status="running") == 1
    assert v("mahavishnu_pool_status", pool="p1", status="degraded") == 0
    assert v("mahavishnu_pool_completed_total", pool="p1") == 10
    assert v("mahavishnu_memory_sync_lag_seconds", target="akosha") == 12.5
    # a pool whose lease this process no longer holds disappears at the next tick
    hooks.pools([])
    assert not any(name == "mahavishnu_pool_backlog" for name, _ in samples(metrics))
