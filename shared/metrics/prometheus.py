"""The Prometheus side of the hooks: counters and histograms fed by `shared.hooks`, and the
pool figures of the pools this process supervises, exposed as they were at the last tick."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from shared.hooks import Finished, Observer, PoolFigures
from shared.metrics import definitions as d
from shared.models import PoolStatus


class PrometheusObserver(Observer):
    """Counts what the hooks report, by pool, into one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(definition: d.MetricDef) -> Counter:
            name = definition.name.removesuffix("_total")  # the client appends it
            return Counter(name, definition.help, definition.labels, registry=registry)

        def histogram(definition: d.MetricDef) -> Histogram:
            return Histogram(
                definition.name,
                definition.help,
                definition.labels,
                registry=registry,
                buckets=d.DURATION_BUCKETS,
            )

        self._counters = {event: counter(m) for event, m in d.TASK_COUNTERS.items()}
        self._duration = histogram(d.TASK_DURATION)
        self._queue_wait = histogram(d.TASK_QUEUE_WAIT)
        self._end_to_end = histogram(d.TASK_END_TO_END)
        self.pool_figures = PoolFiguresCollector()
        registry.register(self.pool_figures)

    def _count(self, event: str, pool: str, count: int) -> None:
        if count:
            self._counters[event].labels(pool).inc(count)

    def submitted(self, pool: str, count: int) -> None:
        self._count("submitted", pool, count)

    def routed(self, pool: str, count: int) -> None:
        self._count("routed", pool, count)

    def started(self, pool: str, queue_waits: Sequence[float]) -> None:
        self._count("started", pool, len(queue_waits))
        observe = self._queue_wait.labels(pool).observe
        for wait in queue_waits:
            observe(max(0.0, wait))

    def finished(self, results: Sequence[Finished]) -> None:
        counts: dict[tuple[str, str], int] = {}
        for result in results:
            key = (result.status, result.pool)
            counts[key] = counts.get(key, 0) + 1
            if result.duration > 0:
                self._duration.labels(result.pool).observe(result.duration)
            if result.end_to_end is not None:
                self._end_to_end.labels(result.pool).observe(max(0.0, result.end_to_end))
        for (status, pool), count in counts.items():
            if status in self._counters:
                self._count(status, pool, count)

    def retried(self, pool: str, count: int) -> None:
        self._count("retried", pool, count)

    def reclaimed(self, pool: str, count: int) -> None:
        self._count("reclaimed", pool, count)

    def pools(self, figures: Sequence[PoolFigures]) -> None:
        self.pool_figures.update(figures)

    def memory_sync(self, target: str, lag_seconds: float) -> None:
        self.pool_figures.set_memory_lag(target, lag_seconds)


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
        self.observer = PrometheusObserver(self.registry)
        ProcessCollector(registry=self.registry)
