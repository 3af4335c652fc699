"""A small stand-in for a kubelet: the one node of the test control plane.

It registers a Node, removes the not-ready taint the API server puts on new nodes, and for every
pod the scheduler binds to it: runs the container as a local process when the pod is in one of
`run_namespaces` and its command is `python ...` (the worker pods: real `python -m worker`
processes, with the pod's env resolved as a kubelet does), patches the pod Running and Ready
through the status subresource, restarts an exited container (restartCount + 1), and finishes
graceful deletes (SIGTERM, wait up to the grace period, SIGKILL, then delete with grace 0).
Pods elsewhere are only marked Running. `/containerLogs` is served over HTTPS, as the API
server's `pods/log` expects.
"""

from __future__ import annotations

import base64
import contextlib
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubernetes import client
from kubernetes.client.exceptions import ApiException

POLL = 0.1  # seconds between looks at the node's pods (a kubelet's own sync loop)


@dataclass
class Container:
    """One container the kubelet runs as a local process."""

    pod_uid: str
    log: Path
    process: subprocess.Popen[bytes] | None
    restarts: int = 0
    term_sent: float = 0.0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeKubelet:
    def __init__(
        self,
        api: client.ApiClient,
        folder: Path,
        host_env: dict[str, str],
        run_namespaces: set[str],
        node: str = "node-1",
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.folder = folder
        self.host_env = host_env
        self.run_namespaces = run_namespaces
        self.node = node
        self.containers: dict[str, Container] = {}  # "namespace/pod"
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-kubelet", daemon=True)
        self._server = self._https_server()
        self._server_thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._server_thread.start()
        port = self._server.server_address[1]
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node, "labels": {"kubernetes.io/hostname": self.node}},
        }
        with contextlib.suppress(ApiException):
            self.core.create_node(node)
        status = {
            "status": {
                "capacity": {"cpu": "64", "memory": "256Gi", "pods": "500"},
                "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "500"},
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "KubeletReady",
                     "message": "fake kubelet", "lastHeartbeatTime": _now(),
                     "lastTransitionTime": _now()}
                ],
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
                "nodeInfo": {
                    "machineID": "fake", "systemUUID": "fake", "bootID": "fake",
                    "kernelVersion": "fake", "osImage": "fake", "containerRuntimeVersion": "fake",
                    "kubeletVersion": "v1.20.2", "kubeProxyVersion": "v1.20.2",
                    "operatingSystem": "linux", "architecture": "amd64",
                },
            }
        }  # fmt: skip
        self.core.patch_node_status(self.node, status)
        self.core.patch_node(self.node, {"spec": {"taints": None}})
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        for box in self.containers.values():
            if box.process is not None and box.process.poll() is None:
                box.process.kill()
                box.process.wait(5)
        if self._server_thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ pods

    def _loop(self) -> None:
        while not self._stop.wait(POLL):
            try:
                pods = self.core.list_pod_for_all_namespaces(
                    field_selector=f"spec.nodeName={self.node}"
                ).items
            except Exception:  # the API server is stopping or busy: the next pass retries
                continue
            for pod in pods:
                try:
                    self._sync(pod)
                except ApiException as exc:  # a pod deleted meanwhile, a conflict: next pass
                    self.last_error = f"{pod.metadata.name}: {exc.status} {exc.reason}"

    def _sync(self, pod: Any) -> None:
        meta = pod.metadata
        key = f"{meta.namespace}/{meta.name}"
        box = self.containers.get(key)
        if box is not None and box.pod_uid != meta.uid:  # a new pod of the same name
            self._kill(box)
            box = None
        if meta.deletion_timestamp is not None:
            if box is None or self._terminated(box, pod.spec.termination_grace_period_seconds):
                body = client.V1DeleteOptions(grace_period_seconds=0)
                with contextlib.suppress(ApiException):
                    self.core.delete_namespaced_pod(meta.name, meta.namespace, body=body)
                self.containers.pop(key, None)
            return
        if box is None:
            box = Container(meta.uid, self.folder / f"{meta.namespace}_{meta.name}.log", None)
            box.process = self._launch(pod, box.log)
            self.containers[key] = box
            self._report(pod, box, None)
        elif box.process is not None and box.process.poll() is not None:
            code = box.process.returncode
            box.restarts += 1
            box.process = self._launch(pod, box.log)
            self._report(pod, box, code)

    def _launch(self, pod: Any, log: Path) -> subprocess.Popen[bytes] | None:
        spec = pod.spec.containers[0]
        command = [*(spec.command or []), *(spec.args or [])]
        if pod.metadata.namespace not in self.run_namespaces or command[:1] != ["python"]:
            log.write_text("fake kubelet: this container is not run, only marked Running\n")
            return None
        env = dict(self.host_env)
        for item in spec.env or []:
            env[item.name] = self._env_value(pod, item)
        argv = [sys.executable, *(_expand(a, env) for a in command[1:])]
        with log.open("ab") as out:
            return subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def _env_value(self, pod: Any, item: Any) -> str:
        source = item.value_from
        if source is None:
            return str(item.value or "")
        if source.field_ref is not None:
            path = source.field_ref.field_path
            return str({"metadata.name": pod.metadata.name,
                        "metadata.namespace": pod.metadata.namespace}[path])  # fmt: skip
        ref = source.secret_key_ref
        secret = self.core.read_namespaced_secret(ref.name, pod.metadata.namespace)
        return base64.b64decode(secret.data[ref.key]).decode()

    def _report(self, pod: Any, box: Container, last_exit: int | None) -> None:
        spec = pod.spec.containers[0]
        last_state: dict[str, Any] = {}
        if last_exit is not None:
            last_state = {"terminated": {"exitCode": last_exit, "reason": "Error",
                                         "startedAt": _now(), "finishedAt": _now()}}  # fmt: skip
        ready = [{"type": t, "status": "True", "lastTransitionTime": _now()}
                 for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")]  # fmt: skip
        status = {
            "status": {
                "phase": "Running",
                "conditions": ready,
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "startTime": _now(),
                "containerStatuses": [
                    {"name": spec.name, "image": spec.image, "imageID": f"fake://{spec.image}",
                     "containerID": f"fake://{pod.metadata.uid}", "ready": True, "started": True,
                     "restartCount": box.restarts, "state": {"running": {"startedAt": _now()}},
                     "lastState": last_state}
                ],
            }
        }  # fmt: skip
        self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, status)

    def _terminated(self, box: Container, grace: int | None) -> bool:
        """SIGTERM once, SIGKILL past the grace period; True once the process is gone."""
        proc = box.process
        if proc is None or proc.poll() is not None:
            return True
        now = time.monotonic()
        if not box.term_sent:
            box.term_sent = now
            proc.send_signal(signal.SIGTERM)
        elif now - box.term_sent > (grace if grace is not None else 30):
            proc.kill()
        return proc.poll() is not None

    @staticmethod
    def _kill(box: Container) -> None:
        if box.process is not None and box.process.poll() is None:
            box.process.kill()
            box.process.wait(5)

    # ------------------------------------------------------------------ /containerLogs

    def _https_server(self) -> ThreadingHTTPServer:
        kubelet = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                found = re.fullmatch(r"/containerLogs/([^/]+)/([^/]+)/([^/]+)", parts.path)
                box = kubelet.containers.get(f"{found[1]}/{found[2]}") if found else None
                if box is None:
                    self.send_error(404, "no such container")
                    return
                lines = box.log.read_bytes().splitlines(keepends=True)
                tail = parse_qs(parts.query).get("tailLines")
                if tail:
                    lines = lines[-int(tail[0]) :] if int(tail[0]) else []
                body = b"".join(lines)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        key, cert = self.folder / "kubelet.key", self.folder / "kubelet.crt"
        self.folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={self.node}", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )  # fmt: skip
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        return server


def _expand(arg: str, env: dict[str, str]) -> str:
    """$(VAR) references in container args, as Kubernetes expands them."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), arg)
