"""Calls to the Kubernetes API for `kubernetes` pools, off the event loop, with errors that say
what was wrong.

The `kubernetes` client is synchronous, so every call runs in a worker thread
(`asyncio.to_thread`) with a request timeout: the orchestrator's loop keeps routing and
supervising while the API server answers. Its failures become `PoolBackendError` naming the
object and the API's reason: a 409 conflict, a 422 invalid object, a 403, a 404 — and a body
refused by the client itself (kubernetes >= 37 validates request bodies with pydantic before any
HTTP call, so an unknown field is a pydantic `ValidationError`, never an `ApiException`).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from shared.config import Settings
from shared.errors import PoolBackendError

T = TypeVar("T")

TRANSIENT = {0, 429, 500, 502, 503, 504}
"""Statuses worth retrying on the next tick (0: no answer at all)."""


def _api_message(exc: Any) -> str:
    """The API server's own message from an ApiException's Status body, else its reason."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or exc.reason or "no reason given")


def translate(exc: BaseException, what: str) -> PoolBackendError:
    """The pool error for a failed call; `what` names the object, e.g. "create Deployment x"."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException
    from urllib3.exceptions import HTTPError

    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        hint = ""
        if status == 404 and "scaledobject" in what.lower():
            hint = " (is KEDA installed? its ScaledObject CRD is missing)"
        return PoolBackendError(
            f"kubernetes: {what}: {status} {exc.reason}: {_api_message(exc)}{hint}", status
        )
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in _field_path(e['loc']))}: {e['msg']}"
            for e in exc.errors()[:3]
        )
        return PoolBackendError(
            f"kubernetes: {what}: invalid request body (refused by the client before sending): "
            f"{problems}",
            422,
        )
    if isinstance(exc, ConfigException):
        return PoolBackendError(f"kubernetes: no usable configuration: {exc}")
    if isinstance(exc, HTTPError | OSError):
        return PoolBackendError(f"kubernetes: {what}: API server unreachable: {exc}")
    raise exc


def _field_path(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """A body field's path without the argument it came in (validate_call puts the argument's
    position or name first)."""
    if loc and (isinstance(loc[0], int) or loc[0] == "body"):
        return loc[1:]
    return loc


class KubeApi:
    """A lazily configured API client (kubeconfig file, in-cluster, or ~/.kube/config)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        """The `kubernetes.client.ApiClient` (configured on first use; blocking)."""
        with self._lock:
            if self._client is None:
                self._client = self._configure()
            return self._client

    def _configure(self) -> Any:
        from kubernetes import client, config

        settings = self.settings
        if settings.kube_config is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return client.ApiClient(configuration)
        path = str(settings.kube_config) if settings.kube_config else None
        return config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=path, context=settings.kube_context
        )

    def apps(self) -> Any:
        from kubernetes import client

        return client.AppsV1Api(self.client())

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.client())

    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.client())

    def call_sync(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run `fn(self)` here (blocking); a failure becomes a PoolBackendError."""
        try:
            return fn(self)
        except Exception as exc:
            raise translate(exc, what) from exc

    async def call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run `fn(self)` in a worker thread; a failure becomes a PoolBackendError."""
        return await asyncio.to_thread(self.call_sync, what, fn)

    @property
    def timeout(self) -> float:
        return self.settings.kube_request_timeout


async def pod_logs(api: KubeApi, namespace: str, pod: str, container: str, tail: int) -> list[str]:
    """The last `tail` lines a pod's container wrote."""
    text = await api.call(
        f"read the log of pod {pod} in namespace {namespace}",
        lambda k: k.core().read_namespaced_pod_log(
            pod, namespace, container=container, tail_lines=tail, _request_timeout=k.timeout
        ),
    )
    return [line for line in str(text).splitlines() if line.strip()][-tail:] if tail else []
