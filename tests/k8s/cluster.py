"""A real Kubernetes control plane on loopback for the tests: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler (v1.20.2, built by `build_apiserver.sh`).

The API server authenticates with a static token file (one admin token in `system:masters`),
authorises with RBAC and signs service-account tokens with a key made here. The controllers and
the scheduler use the same admin kubeconfig. Nothing runs pods: `fake_kubelet.py` plays the node.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(os.environ.get("MAHAVISHNU_KUBE_CACHE", Path.home() / ".cache/mahavishnu/kube"))
BIN = CACHE / "bin"
BUILD_SCRIPT = Path(__file__).with_name("build_apiserver.sh")
TOOLS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
START_TIMEOUT = 90.0  # seconds; the API server needs ~5 s alone, longer on a busy machine


def binaries_missing() -> str:
    """Why the control plane cannot start here ('' when it can)."""
    missing = [t for t in TOOLS if not (BIN / t).is_file()]
    if missing:
        return f"{', '.join(missing)} not built in {BIN}: run {BUILD_SCRIPT}"
    if not any((Path(p) / "etcd").is_file() for p in os.environ.get("PATH", "").split(":")):
        return "etcd is not installed (Debian package etcd-server)"
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ControlPlane:
    """The running processes and how to reach the API server."""

    folder: Path
    url: str
    token: str
    kubeconfig: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def stop(self) -> None:
        """Stop every process by its pid (controllers first, etcd last)."""
        for name in reversed(list(self.processes)):
            proc = self.processes[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self.processes.clear()

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.folder / f"{name}.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _run(folder: Path, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
    out = (folder / f"{name}.log").open("wb")
    try:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=folder)
    finally:
        out.close()


def _write_kubeconfig(path: Path, url: str, token: str, ca: Path) -> None:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: test\n  cluster:\n    server: {url}\n"
        f"    certificate-authority: {ca}\n"
        f"users:\n- name: admin\n  user:\n    token: {token}\n"
        "contexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\n"
        "current-context: test\n"
    )


def _wait_ready(plane: ControlPlane, deadline: float, checks: list[str]) -> None:
    """Until every path answers 200 (e.g. /readyz; the default service account, which the
    controller manager makes)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    for path in checks:
        while True:
            for name, proc in plane.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited at start:\n{plane.log_tail(name)}")
            request = urllib.request.Request(
                plane.url + path, headers={"Authorization": f"Bearer {plane.token}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=5, context=context) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the control plane did not become ready ({path}):\n"
                    + plane.log_tail("kube-apiserver")
                )
            time.sleep(0.2)  # polling a process that has no readiness event of its own


def start_control_plane(folder: Path) -> ControlPlane:
    """Start etcd, the API server, the controller manager and the scheduler on free ports."""
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    # admin, and an identity bound to no role (for the 403 test)
    (folder / "tokens.csv").write_text(
        f'{token},admin,admin,"system:masters"\nnobody-token,nobody,nobody\n'
    )
    sa_key = folder / "sa.key"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True, capture_output=True
    )
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    url = f"https://127.0.0.1:{api_port}"
    kubeconfig = folder / "kubeconfig"
    plane = ControlPlane(folder, url, token, kubeconfig)
    etcd_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
    plane.processes["etcd"] = _run(
        folder,
        "etcd",
        ["etcd", "--name", "test", "--data-dir", str(folder / "etcd"),
         "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
         "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
         "--initial-cluster", f"test={peer_url}", "--unsafe-no-fsync"],
    )  # fmt: skip
    plane.processes["kube-apiserver"] = _run(
        folder,
        "kube-apiserver",
        [str(BIN / "kube-apiserver"), "--etcd-servers", etcd_url,
         "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
         "--secure-port", str(api_port), "--insecure-port", "0",
         "--cert-dir", str(folder / "certs"), "--token-auth-file", str(folder / "tokens.csv"),
         "--authorization-mode", "RBAC", "--service-account-key-file", str(sa_key),
         "--service-account-signing-key-file", str(sa_key),
         "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
         "--service-cluster-ip-range", "10.96.0.0/16", "--allow-privileged",
         "--enable-priority-and-fairness=false", "--profiling=false"],
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT
    try:  # the controllers give up if the API server is not healthy within ~10 s
        _wait_ready(plane, deadline, ["/readyz"])
    except BaseException:
        plane.stop()
        raise
    # the API server's self-signed serving certificate (for 127.0.0.1) and its CA, as it wrote
    _write_kubeconfig(kubeconfig, url, token, folder / "certs/apiserver.crt")
    plane.processes["kube-controller-manager"] = _run(
        folder,
        "kube-controller-manager",
        [str(BIN / "kube-controller-manager"), "--kubeconfig", str(kubeconfig),
         "--service-account-private-key-file", str(sa_key), "--leader-elect=false",
         "--port", "0", "--secure-port", "0", "--profiling=false",
         "--controllers", "*,-nodelifecycle,-nodeipam,-cloud-node-lifecycle,-route,-service",
         "--concurrent-deployment-syncs", "5", "--concurrent-replicaset-syncs", "5"],
    )  # fmt: skip
    plane.processes["kube-scheduler"] = _run(
        folder,
        "kube-scheduler",
        [str(BIN / "kube-scheduler"), "--kubeconfig", str(kubeconfig), "--leader-elect=false",
         "--port", "0", "--secure-port", "0", "--profiling=false"],
    )  # fmt: skip
    try:
        _wait_ready(plane, deadline, ["/api/v1/namespaces/default/serviceaccounts/default"])
    except BaseException:
        plane.stop()
        raise
    return plane
