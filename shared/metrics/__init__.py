"""Prometheus metrics: `install` puts this process's observer on the hooks (`shared.hooks`)
and, given a port, serves `/metrics` (the Prometheus text format) on it.

Names and meanings: `shared/metrics/definitions.py` and `docs/metrics.md`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import generate_latest, start_http_server

from shared.config import Settings
from shared.errors import ConfigError
from shared.hooks import HOOKS
from shared.metrics.prometheus import Metrics

log = logging.getLogger("mahavishnu.metrics")

_lock = threading.Lock()
_metrics: Metrics | None = None


def installed() -> Metrics:
    """This process's metrics, installed on the hooks on first use."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = Metrics()
            HOOKS.add(_metrics.observer)
        return _metrics


def current() -> Metrics | None:
    """This process's metrics if they are installed (this process serves `/metrics`)."""
    with _lock:
        return _metrics


def uninstall() -> None:
    """Take this process's metrics off the hooks and forget them (tests running many roles in
    one process)."""
    global _metrics
    with _lock:
        if _metrics is not None:
            HOOKS.remove(_metrics.observer)
            _metrics = None


@dataclass
class MetricsServer:
    """A running `/metrics` endpoint (a thread of prometheus-client's WSGI server)."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def install(settings: Settings, *, role: str, port: int | None = None) -> MetricsServer | None:
    """When `port` (default: the `metrics_port` setting) is not 0, install the metrics on the
    hooks and serve them on `metrics_host:port` (with no port nothing is installed: nobody could
    read them, and the hooks cost nothing). Raises ConfigError naming the port when it is taken."""
    port = settings.metrics_port if port is None else port
    if not port:
        return None
    metrics = installed()
    try:
        server, thread = start_http_server(
            port, addr=settings.metrics_host, registry=metrics.registry
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot serve /metrics on {settings.metrics_host}:{port} ({exc.strerror or exc}); "
            "choose another metrics_port (--metrics-port), or 0 for none"
        ) from None
    log.info("%s metrics at http://%s:%d/metrics", role, settings.metrics_host, port)
    return MetricsServer(server, thread)


def render() -> bytes:
    """This process's metrics in the text format (what `/metrics` answers)."""
    return generate_latest(installed().registry)
