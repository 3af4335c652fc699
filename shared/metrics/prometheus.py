"""The Prometheus side of the hooks: counters and histograms fed by `shared.hooks`, and the
pool figures of the pools this process supervises, exposed as they were at the last tick."""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from shared.hooks import Finished, Observer, PoolFigures
from shared.metrics import definitions as d
from shared.metrics.snapshots import Snapshot, read_folder
from shared.models import PoolStatus


class _Histogram:
    """One histogram series kept as plain numbers: a batch of observations costs a bisect and
    an increment each, with no lock per value (prometheus-client's Histogram takes a lock and
    walks its buckets per observation: about 5 µs, too much per task)."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(d.DURATION_BUCKETS) + 1)  # the last one: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, values: Sequence[float]) -> None:
        counts, bounds = self.counts, d.DURATION_BUCKETS
        total = 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1  # `le` is inclusive
            total += value
        self.sum += total
        self.count += len(values)


def _cumulative(counts: Sequence[int]) -> list[tuple[str, float]]:
    cumulative, out = 0, []
    for bound, count in zip((*d.DURATION_BUCKETS, math.inf), counts, strict=True):
        cumulative += count
        out.append(("+Inf" if bound == math.inf else repr(float(bound)), float(cumulative)))
    return out


class PrometheusObserver(Observer, Collector):
    """Counts what the hooks report, by pool: plain numbers updated once per batch under one
    lock, turned into metric families when scraped (in the HTTP server's thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], float] = {}  # (event, pool) -> count
        self._histograms: dict[tuple[d.MetricDef, str], _Histogram] = {}
        self.pool_figures = PoolFiguresCollector()
        self._folders: list[Path] = []  # local workers' snapshots (shared.metrics.snapshots)

    def add_folder(self, folder: Path) -> None:
        """Add the snapshots in `folder` to what this observer serves, at every scrape."""
        with self._lock:
            if folder not in self._folders:
                self._folders.append(folder)

    def snapshot(self) -> Snapshot:
        """This process's own counts as plain numbers (what a local worker writes)."""
        with self._lock:
            return Snapshot(
                dict(self._counts),
                {
                    (metric.name, pool): (list(series.counts), series.sum)
                    for (metric, pool), series in self._histograms.items()
                },
            )

    def _count(self, event: str, pool: str, count: int) -> None:
        if count:
            with self._lock:
                key = (event, pool)
                self._counts[key] = self._counts.get(key, 0) + count

    def _observe(self, metric: d.MetricDef, pool: str, values: Sequence[float]) -> None:
        if values:
            series = self._histograms.get((metric, pool))
            if series is None:
                series = self._histograms.setdefault((metric, pool), _Histogram())
            series.observe(values)

    def submitted(self, pool: str, count: int) -> None:
        self._count("submitted", pool, count)

    def routed(self, pool: str, count: int) -> None:
        self._count("routed", pool, count)

    def started(self, pool: str, queue_waits: Sequence[float]) -> None:
        waits = [w if w > 0 else 0.0 for w in queue_waits]  # a clock step back counts as 0
        with self._lock:
            key = ("started", pool)
            self._counts[key] = self._counts.get(key, 0) + len(waits)
            self._observe(d.TASK_QUEUE_WAIT, pool, waits)

    def finished(self, results: Sequence[Finished]) -> None:
        by_pool: dict[str, tuple[list[float], list[float]]] = {}
        counts: dict[tuple[str, str], int] = {}
        for result in results:
            key = (result.status, result.pool)
            counts[key] = counts.get(key, 0) + 1
            durations, ends = by_pool.setdefault(result.pool, ([], []))
            if result.duration > 0:
                durations.append(result.duration)
            if result.end_to_end is not None:
                ends.append(result.end_to_end if result.end_to_end > 0 else 0.0)
        with self._lock:
            for key, count in counts.items():
                if key[0] in d.TASK_COUNTERS:
                    self._counts[key] = self._counts.get(key, 0) + count
            for pool, (durations, ends) in by_pool.items():
                self._observe(d.TASK_DURATION, pool, durations)
                self._observe(d.TASK_END_TO_END, pool, ends)

    def retried(self, pool: str, count: int) -> None:
        self._count("retried", pool, count)

    def reclaimed(self, pool: str, count: int) -> None:
        self._count("reclaimed", pool, count)

    def pools(self, figures: Sequence[PoolFigures]) -> None:
        self.pool_figures.update(figures)

    def memory_sync(self, target: str, lag_seconds: float) -> None:
        self.pool_figures.set_memory_lag(target, lag_seconds)

    def collect(self) -> Iterable[Metric]:
        merged = self.snapshot()
        with self._lock:
            folders = list(self._folders)
        for folder in folders:
            merged.add(read_folder(folder))
        counts = merged.counts
        for event, definition in d.TASK_COUNTERS.items():
            family = CounterMetricFamily(
                definition.name.removesuffix("_total"), definition.help, labels=definition.labels
            )
            for (counted, pool), value in sorted(counts.items()):
                if counted == event:
                    family.add_metric([pool], value)
            yield family
        for definition in (d.TASK_DURATION, d.TASK_QUEUE_WAIT, d.TASK_END_TO_END):
            histogram = HistogramMetricFamily(
                definition.name, definition.help, labels=definition.labels
            )
            for (name, pool), (buckets, total) in sorted(merged.histograms.items()):
                if name == definition.name:
                    histogram.add_metric([pool], _cumulative(buckets), total)
            yield histogram

    def describe(self) -> Iterable[Metric]:
        return []


class PoolFiguresCollector(Collector):
    """The latest figures of the pools this process holds the lease of, collected at scrape
    time. Only the lease holder reports a pool, so several orchestrators never count it twice;
    a pool whose lease moved to another orchestrator is dropped here at the next tick."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the scrape runs in the HTTP server's thread
        self._figures: tuple[PoolFigures, ...] = ()
        self._memory_lag: dict[str, float] = {}

    def update(self, figures: Sequence[PoolFigures]) -> None:
        with self._lock:
            self._figures = tuple(figures)

    def set_memory_lag(self, target: str, lag_seconds: float) -> None:
        with self._lock:
            self._memory_lag[target] = lag_seconds

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            figures, lags = self._figures, dict(self._memory_lag)

        def gauge(definition: d.MetricDef) -> GaugeMetricFamily:
            return GaugeMetricFamily(definition.name, definition.help, labels=definition.labels)

        def counter(definition: d.MetricDef) -> CounterMetricFamily:
            name = definition.name.removesuffix("_total")
            return CounterMetricFamily(name, definition.help, labels=definition.labels)

        backlog, in_flight = gauge(d.POOL_BACKLOG), gauge(d.POOL_IN_FLIGHT)
        workers, capacity, status = (
            gauge(d.POOL_WORKERS),
            gauge(d.POOL_CAPACITY),
            gauge(d.POOL_STATUS),
        )
        completed, failed = counter(d.POOL_COMPLETED), counter(d.POOL_FAILED)
        for f in figures:
            backlog.add_metric([f.pool], f.backlog)
            in_flight.add_metric([f.pool], f.in_flight)
            workers.add_metric([f.pool, "local"], f.local_workers)
            workers.add_metric([f.pool, "external"], f.external_workers)
            workers.add_metric([f.pool, "draining"], f.draining)
            capacity.add_metric([f.pool], f.capacity)
            for value in PoolStatus:
                status.add_metric([f.pool, value.value], 1.0 if f.status == value else 0.0)
            completed.add_metric([f.pool], f.completed)
            failed.add_metric([f.pool], f.failed)
        lag = gauge(d.MEMORY_SYNC_LAG)
        for target, seconds in sorted(lags.items()):
            lag.add_metric([target], seconds)
        yield from (backlog, in_flight, workers, capacity, status, completed, failed, lag)

    def describe(self) -> Iterable[Metric]:
        return []


class Metrics:
    """One process's metrics: a registry with the observer, the pool figures and the
    process's own CPU and memory (`process_*`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.observer = PrometheusObserver()
        self.registry.register(self.observer)
        self.registry.register(self.observer.pool_figures)
        ProcessCollector(registry=self.registry)
