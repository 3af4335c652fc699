"""Settings: one typed model read from YAML files and `MAHAVISHNU_*` environment variables.

Sources, highest priority first: keyword arguments, environment (`MAHAVISHNU_REDIS_URL`, ...),
`settings/local.yaml`, `settings/mahavishnu.yaml` (the folder can be moved with
`MAHAVISHNU_SETTINGS_DIR`). An invalid value fails at start with the field, the value and the
source named; so does an unknown key in a file or an unknown `MAHAVISHNU_*` variable, with the
nearest valid name (variables that are not settings are listed in NOT_SETTINGS_ENV).
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from shared.errors import ConfigError
from shared.keys import DEFAULT_PREFIX, Keys
from shared.models import PoolType, RoutingStrategy, parse_pool_type

MemoryDestination = Literal["session-buddy", "akosha"]
MEMORY_TOOLS = (
    *("store_reflection", "search_by_source_session", "quick_search"),  # Session-Buddy
    *("generate_batch_embeddings", "batch_store_memories", "search_all_systems"),  # Akosha
)
"""The tools memory sync and search call, by the names `memory_sync_tools` may change."""

ENV_PREFIX = "MAHAVISHNU_"
SETTINGS_DIR_ENV = "MAHAVISHNU_SETTINGS_DIR"
WORKER_METRICS_DIR_ENV = "MAHAVISHNU_WORKER_METRICS_DIR"
LogFormat = Literal["text", "kv", "json"]

NOT_SETTINGS_ENV: dict[str, str] = {
    SETTINGS_DIR_ENV: "the folder of the YAML files",
    WORKER_METRICS_DIR_ENV: "where a local worker writes its metrics (set by its orchestrator)",
    "MAHAVISHNU_TEST_REDIS_URL": "the Redis the test suite uses (tests/conftest.py)",
    "MAHAVISHNU_TEST_BROKERS": "where the integration suites run: standalone,cluster",
    "MAHAVISHNU_WRITE_RELIABILITY": "1 makes the chaos suite rewrite docs/reliability.md",
    "MAHAVISHNU_REAL_SESSION_BUDDY_URL": "the real Session-Buddy `make test-counterparts` runs",
    "MAHAVISHNU_REAL_AKOSHA_URL": "the real Akosha `make test-counterparts` runs",
}
"""`MAHAVISHNU_*` variables that are not settings: the only ones the unknown-name check lets by."""


def settings_dir() -> Path:
    """The folder holding `mahavishnu.yaml` and `local.yaml`."""
    return Path(os.environ.get(SETTINGS_DIR_ENV, "settings"))


def yaml_files() -> list[Path]:
    """The YAML files read, lowest priority first."""
    folder = settings_dir()
    return [folder / "mahavishnu.yaml", folder / "local.yaml"]


class Settings(BaseSettings):
    """Every setting of every process. The original's keys keep their names."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", validate_default=True, frozen=True
    )

    # broker
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = DEFAULT_PREFIX
    embedded_broker: bool = True
    embedded_broker_dir: Path = Path(".mahavishnu/redis")
    # seconds one non-blocking Redis command may take (socket timeout; a timeout is not retried),
    # so a Redis that stops answering fails a CLI call in about this time instead of hanging
    redis_command_timeout: float = Field(default=5.0, ge=0.1, le=300)

    # the original's pool keys
    pools_enabled: bool = True
    default_pool_type: PoolType = PoolType.LOCAL
    pool_routing_strategy: RoutingStrategy = RoutingStrategy.LEAST_LOADED
    pool_default_min_workers: int = Field(default=1, ge=0, le=1000)
    pool_default_max_workers: int = Field(default=10, ge=1, le=1000)
    memory_aggregation_enabled: bool = False  # off until the services run (README)
    memory_sync_interval: float = Field(default=60.0, gt=0)
    session_buddy_pool_url: str = "http://localhost:8678/mcp"
    akosha_url: str = "http://localhost:8682/mcp"

    # workers
    worker_concurrency: int = Field(default=4, ge=1, le=10_000)
    heartbeat_interval: float = Field(default=1.0, gt=0, le=60)
    heartbeat_ttl: float = Field(default=10.0, gt=0, le=600)
    drain_grace: float = Field(default=30.0, ge=0, le=3600)
    worker_block_ms: int = Field(default=1000, ge=10, le=60_000)

    # tasks
    task_default_timeout: float = Field(default=300.0, gt=0)
    task_max_attempts: int = Field(default=3, ge=1, le=100)
    task_deadline_grace: float = Field(default=30.0, ge=0)
    retry_backoff_base: float = Field(default=0.5, ge=0)
    retry_backoff_max: float = Field(default=60.0, ge=0)
    result_ttl: int = Field(default=7 * 24 * 3600, ge=60)
    reply_ttl: int = Field(default=3600, ge=10)
    memory_output_chars: int = Field(default=4000, ge=0)
    memory_max_len: int = Field(default=10_000, ge=10)
    events_max_len: int = Field(default=10_000, ge=100)
    dlq_max_len: int = Field(default=100_000, ge=100)
    # live progress of running tasks: a stream per task (Keys.task_progress) that a worker
    # writes at most once per `progress_interval` s per task, trimmed to `progress_max_len`
    # entries, expiring `progress_ttl` s after its last write
    progress_interval: float = Field(default=0.25, ge=0.01, le=10)
    progress_ttl: float = Field(default=3600.0, ge=1)
    progress_max_len: int = Field(default=200, ge=10)

    # orchestrator
    ingress_max_len: int = Field(default=100_000, ge=1)
    route_batch: int = Field(default=200, ge=1, le=10_000)
    supervise_interval: float = Field(default=0.5, gt=0, le=60)
    autoscale_backlog_per_worker: int = Field(default=8, ge=1)
    orchestrator_lease_ttl: float = Field(default=10.0, gt=0)
    spawn_timeout: float = Field(default=30.0, gt=0)

    # kubernetes pools (orchestrator/pools/kubernetes.py); a pool's options.kubernetes overrides
    kube_config: Path | None = None  # kubeconfig file; unset: in-cluster, else ~/.kube/config
    kube_context: str | None = None
    kube_namespace: str = "mahavishnu"
    kube_image: str = "mahavishnu-worker:0.1.0"  # deploy/docker/Dockerfile.worker
    kube_service_account: str = "mahavishnu-worker"
    kube_redis_secret: str = "mahavishnu-redis"  # Secret whose key "url" is the workers' Redis URL
    kube_request_timeout: float = Field(default=15.0, gt=0, le=300)

    # MCP facade
    mcp_http_token: SecretStr | None = None
    mcp_http_require_auth: bool = True  # False is honoured on loopback addresses only
    mcp_allow_pool_code: bool = False  # may MCP callers name functions/commands for a pool?
    mcp_allowed_hosts: list[str] = Field(default_factory=list)

    # arq pools: the python of arq's own virtual environment (`make arq-venv`, or any venv
    # with `pip install 'mahavishnu-pools[arq]'`); None: .venv-arq/bin/python of the current
    # folder or of this checkout
    arq_python: Path | None = None
    # metrics and logs (docs/metrics.md)
    metrics_port: int = Field(default=0, ge=0, le=65535)  # /metrics of this process; 0: off
    metrics_host: str = "0.0.0.0"  # the address /metrics binds (scraped from other hosts)
    log_format: LogFormat = "text"
    # memory sync (orchestrator/memory/): `memory_aggregation_enabled` starts the aggregator
    # in every orchestrator; it sends each pool's memory records to these destinations
    memory_sync_destinations: list[MemoryDestination] = ["session-buddy", "akosha"]
    session_buddy_token_env: str | None = None  # name of the env var holding its bearer token
    akosha_token_env: str | None = None
    memory_sync_project: str | None = Field(
        default=None, pattern=r"^[a-zA-Z0-9._-]{1,128}$"
    )  # Session-Buddy `project`; default derived from key_prefix
    memory_sync_batch: int = Field(default=100, ge=1, le=1000)  # records per read and send
    memory_sync_burst: int = Field(default=50, ge=1)  # finished tasks that trigger a sync soon
    memory_sync_timeout: float = Field(default=30.0, gt=0, le=600)  # one remote call
    memory_sync_backoff_max: float = Field(default=60.0, gt=0)  # retry cap for a failing service
    memory_search_threshold: float = Field(default=0.7, ge=0, le=1)  # Akosha's similarity floor
    # tool names (canonical name -> the service's) and argument names (tool -> ours -> theirs)
    memory_sync_tools: dict[str, str] = Field(default_factory=dict)
    memory_sync_tool_args: dict[str, dict[str, str]] = Field(default_factory=dict)

    @field_validator("default_pool_type", mode="before")
    @classmethod
    def _pool_type_alias(cls, value: object) -> object:
        return parse_pool_type(value) if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url_scheme(cls, value: str) -> str:
        if value.partition("://")[0].lower() in CLUSTER_SCHEMES:
            parse_cluster_url(value)
            return value
        parts = urlsplit(value)
        if parts.scheme not in {"redis", "rediss", "unix", "valkey", "valkeys"}:
            raise ValueError(
                "must start with redis://, rediss://, unix://, redis+cluster:// or "
                "rediss+cluster://"
            )
        try:
            parts.port  # noqa: B018 -- parsing the port is the check
        except ValueError:
            raise ValueError("has a malformed port; use e.g. redis://127.0.0.1:6379/0") from None
        return value

    @field_validator("memory_sync_tools", "memory_sync_tool_args")
    @classmethod
    def _known_memory_tools(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(MEMORY_TOOLS))
        if unknown:
            raise ValueError(
                f"names unknown tool(s) {', '.join(unknown)}; the tools memory sync calls are "
                + ", ".join(MEMORY_TOOLS)
            )
        return value

    @field_validator("key_prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        if not value or any(c in value for c in " {}\n"):
            raise ValueError("must be non-empty without spaces or braces, e.g. 'mhv:'")
        return value

    @model_validator(mode="after")
    def _timings_are_consistent(self) -> Self:
        if self.heartbeat_interval >= self.heartbeat_ttl:
            raise ValueError(
                f"heartbeat_interval ({self.heartbeat_interval:g}s) must be below heartbeat_ttl "
                f"({self.heartbeat_ttl:g}s), or live workers would look dead between beats"
            )
        if self.supervise_interval >= self.orchestrator_lease_ttl:
            raise ValueError(
                f"supervise_interval ({self.supervise_interval:g}s) must be below "
                f"orchestrator_lease_ttl ({self.orchestrator_lease_ttl:g}s), or leases would lapse"
            )
        if self.pool_default_min_workers > self.pool_default_max_workers:
            raise ValueError(
                f"pool_default_min_workers ({self.pool_default_min_workers}) must not exceed "
                f"pool_default_max_workers ({self.pool_default_max_workers})"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then environment, then local.yaml, then mahavishnu.yaml.

        Raises ConfigError for an unreadable or invalid file and for unknown names.
        """
        main, local = (read_yaml(path) for path in yaml_files())
        problems = [
            *unknown_keys(main, f"in {yaml_files()[0]}"),
            *unknown_keys(local, f"in {yaml_files()[1]}"),
            *unknown_env(),
        ]
        if problems:
            raise ConfigError("invalid settings: " + "; ".join(problems))
        return (
            init_settings,
            env_settings,
            InitSettingsSource(settings_cls, init_kwargs=local),
            InitSettingsSource(settings_cls, init_kwargs=main),
        )

    @property
    def keys(self) -> Keys:
        """Key names under this deployment's prefix."""
        return Keys(self.key_prefix)

    @property
    def redis_url_redacted(self) -> str:
        """The broker URL with any password replaced by `***`, safe for logs and --json."""
        return redact_url(self.redis_url)


def redact_url(url: str) -> str:
    """Replace the password (and a lone user token) of a URL with `***`.

    Split by hand rather than with urlsplit, which raises on some malformed URLs (an unclosed
    `[`) that must still be shown, redacted, in the error that rejects them.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    ends = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
    end = min(ends, default=len(rest))
    userinfo, at, hosts = rest[:end].rpartition("@")
    if not at or not userinfo:
        return url
    user, colon, _ = userinfo.partition(":")
    auth = f"{user}:***" if colon else "***"
    return f"{scheme}://{auth}@{hosts}{rest[end:]}"


@dataclass(frozen=True)
class ClusterUrl:
    """A `redis+cluster://` or `rediss+cluster://` URL, parsed."""

    nodes: tuple[tuple[str, int], ...]  # the seed nodes, (host, port)
    tls: bool
    username: str | None
    password: str | None
    options: dict[str, str]  # TLS options from the query string (CLUSTER_URL_OPTIONS)


CLUSTER_SCHEMES = frozenset({"redis+cluster", "rediss+cluster"})
CLUSTER_URL_OPTIONS = frozenset(
    {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname"}
)
_CLUSTER_URL_EXAMPLE = "e.g. redis+cluster://127.0.0.1:7000,127.0.0.1:7001"


def parse_cluster_url(url: str) -> ClusterUrl:
    """The seed nodes, credentials and TLS options of a Redis Cluster URL:
    `redis+cluster://[user:password@]host[:port][,host[:port]...][/0][?ssl_...=...]`.

    Credentials apply to every node; the port defaults to 6379; IPv6 hosts go in brackets.
    Raises ValueError naming what is wrong (never the password).
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"is malformed ({exc}); use {_CLUSTER_URL_EXAMPLE}") from None
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ValueError(
            f"must start with redis+cluster:// or rediss+cluster://; {_CLUSTER_URL_EXAMPLE}"
        )
    if parts.path.strip("/") not in {"", "0"}:
        raise ValueError(
            f"names database {parts.path.strip('/')!r}, but a Redis Cluster has database 0 only: "
            "drop the /N path"
        )
    if parts.fragment:
        raise ValueError("has a #fragment; a Redis Cluster URL takes none")
    options: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in CLUSTER_URL_OPTIONS:
            raise ValueError(
                f"has the unknown option {name!r}; a cluster URL takes only "
                + ", ".join(sorted(CLUSTER_URL_OPTIONS))
            )
        options[name] = value
    if options and parts.scheme != "rediss+cluster":
        raise ValueError("has TLS options, which need rediss+cluster://")
    hosts = parts.netloc.rpartition("@")[2]
    if not hosts:
        raise ValueError(f"names no seed node; {_CLUSTER_URL_EXAMPLE}")
    nodes = tuple(_seed_node(entry) for entry in hosts.split(","))
    return ClusterUrl(
        nodes=nodes,
        tls=parts.scheme == "rediss+cluster",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        options=options,
    )


def _seed_node(entry: str) -> tuple[str, int]:
    """`host`, `host:port` or `[ipv6]:port` as (host, port); ValueError naming the entry."""
    if not entry:
        raise ValueError(
            f"has an empty seed node (two commas, or one at an end); {_CLUSTER_URL_EXAMPLE}"
        )
    if entry.startswith("["):
        host, bracket, after = entry[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(f"has a malformed IPv6 seed node {entry!r}; write e.g. [::1]:7000")
        port_text = after[1:] if after else None
    else:
        if entry.count(":") > 1:
            raise ValueError(
                f"has the seed node {entry!r}: put an IPv6 address in brackets, e.g. [::1]:7000"
            )
        host, colon, port_text_or_empty = entry.partition(":")
        port_text = port_text_or_empty if colon else None
    if not host:
        raise ValueError(f"has a seed node without a host: {entry!r}")
    if port_text is None:
        return host, 6379
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"has a bad port in seed node {entry!r}: ports are 1 to 65535")
    return host, int(port_text)


def read_yaml(path: Path) -> dict[str, Any]:
    """The settings a YAML file holds ({} when it is missing or empty).

    Raises ConfigError naming the file and what is wrong: where its bytes are not UTF-8, the
    line of a YAML syntax error, a document that is not a mapping.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"invalid settings: cannot read {path}: {exc.strerror or exc}") from None
    try:
        source = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"invalid settings: {path} is not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start} cannot be decoded; save the file as UTF-8"
        ) from None
    try:
        data = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"invalid settings: {path} is not valid YAML: {_yaml_problem(exc)}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"invalid settings: {path} must hold a mapping of settings, not {type(data).__name__}"
        )
    return {str(key): value for key, value in data.items()}


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error as 'line L, column C: problem (context)', without PyYAML's stream names."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        text = f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
        if exc.context:
            text += f" ({exc.context}"
            if exc.context_mark is not None:
                text += f" at line {exc.context_mark.line + 1}"
            text += ")"
        return text
    if isinstance(exc, yaml.reader.ReaderError):
        code = ord(exc.character) if isinstance(exc.character, str) else int(exc.character)
        return f"character U+{code:04X} at character {exc.position}: {exc.reason}"
    return " ".join(str(exc).split())


REMOVED_SETTINGS: dict[str, str] = {
    "redis_cluster": "a Redis Cluster is named by its URL now: redis+cluster://host:port,host:port",
}
"""Settings that no longer exist, with what replaces them (named in the unknown-name error)."""


def _did_you_mean(name: str, candidates: list[str], quote: bool) -> str:
    removed = REMOVED_SETTINGS.get(name.lower().removeprefix(ENV_PREFIX.lower()))
    if removed:
        return f" (removed: {removed})"
    close = difflib.get_close_matches(name, candidates, n=1)
    if not close:
        return " (see shared/config.py for every setting)"
    return f" (did you mean {close[0]!r}?)" if quote else f" (did you mean {close[0]}?)"


def unknown_keys(data: dict[str, Any], where: str) -> list[str]:
    """One problem per key of `data` that is no setting, naming `where` it was found."""
    fields = sorted(Settings.model_fields)
    return [
        f"unknown key {key!r} {where}{_did_you_mean(key.lower(), fields, quote=True)}"
        for key in data
        if key.lower() not in Settings.model_fields  # names are matched case-insensitively
    ]


def unknown_env() -> list[str]:
    """One problem per `MAHAVISHNU_*` environment variable that is neither a setting nor in
    NOT_SETTINGS_ENV."""
    valid = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields} | set(
        NOT_SETTINGS_ENV
    )
    return [
        f"unknown environment variable {name}{_did_you_mean(name.upper(), sorted(valid), False)}"
        for name in sorted(os.environ)
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in valid
    ]


def _source_of(field: str) -> str:
    env_name = f"{ENV_PREFIX}{field.upper()}"
    if any(name.upper() == env_name for name in os.environ):
        return f"environment variable {env_name}"
    for path in reversed(yaml_files()):
        try:
            data = read_yaml(path)
        except ConfigError:
            continue
        if field in (key.lower() for key in data):
            return str(path)
    return "the default or a keyword argument"


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; raise ConfigError naming the field, the value and its source (or the
    unknown key and where it is)."""
    unknown = unknown_keys(overrides, "given as a keyword argument")
    if unknown:
        raise ConfigError("invalid settings: " + "; ".join(unknown))
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            if not err.get("loc"):  # a rule over several settings: its message names them
                problems.append(str(err["msg"]).removeprefix("Value error, "))
                continue
            field = str(err["loc"][0])
            value = err.get("input")
            if "token" in field or "password" in field:
                shown = "***"
            elif field == "redis_url" and isinstance(value, str):
                shown = repr(redact_url(value))
            else:
                shown = repr(value)
            message = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{field}={shown} from {_source_of(field)}: {message}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process exactly these settings."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, list | dict):
            text = json.dumps(value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[f"{ENV_PREFIX}{name.upper()}"] = text
    return env
