"""Settings from YAML files and MAHAVISHNU_* variables; errors name field, value and source."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.config import NOT_SETTINGS_ENV, Settings, load_settings, redact_url
from shared.errors import ConfigError
from shared.models import PoolType, RoutingStrategy

pytestmark = pytest.mark.unit  # needs no Redis: `make test-unit`


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MAHAVISHNU_SETTINGS_DIR", str(tmp_path))
    for name in ("REDIS_URL", "KEY_PREFIX", "POOL_ROUTING_STRATEGY", "DEFAULT_POOL_TYPE"):
        monkeypatch.delenv(f"MAHAVISHNU_{name}", raising=False)
    return tmp_path


def test_defaults(folder: Path) -> None:
    settings = load_settings()
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.key_prefix == "mhv:"
    assert settings.pool_routing_strategy is RoutingStrategy.LEAST_LOADED


def test_local_yaml_overrides_main_yaml_and_env_overrides_both(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (folder / "mahavishnu.yaml").write_text(
        "pool_routing_strategy: random\ndefault_pool_type: session-buddy\nkey_prefix: 'a:'\n"
    )
    (folder / "local.yaml").write_text("pool_routing_strategy: round_robin\n")
    settings = load_settings()
    assert settings.pool_routing_strategy is RoutingStrategy.ROUND_ROBIN
    assert settings.default_pool_type is PoolType.DELEGATED
    assert settings.key_prefix == "a:"
    monkeypatch.setenv("MAHAVISHNU_POOL_ROUTING_STRATEGY", "affinity")
    assert load_settings().pool_routing_strategy is RoutingStrategy.AFFINITY


def test_the_originals_env_keys_work(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAHAVISHNU_POOLS_ENABLED", "true")
    monkeypatch.setenv("MAHAVISHNU_DEFAULT_POOL_TYPE", "mahavishnu")
    monkeypatch.setenv("MAHAVISHNU_POOL_ROUTING_STRATEGY", "round_robin")
    settings = load_settings()
    assert settings.default_pool_type is PoolType.LOCAL
    assert settings.pool_routing_strategy is RoutingStrategy.ROUND_ROBIN


def test_a_bad_env_value_names_field_value_and_variable(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAHAVISHNU_POOL_ROUTING_STRATEGY", "fastest")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    message = str(exc.value)
    assert "pool_routing_strategy='fastest'" in message
    assert "environment variable MAHAVISHNU_POOL_ROUTING_STRATEGY" in message


def test_a_bad_yaml_value_names_the_file(folder: Path) -> None:
    (folder / "local.yaml").write_text("pool_default_min_workers: -3\n")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert "pool_default_min_workers=-3" in str(exc.value)
    assert str(folder / "local.yaml") in str(exc.value)


def test_broken_yaml_is_a_config_error(folder: Path) -> None:
    (folder / "mahavishnu.yaml").write_text("redis_url: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings()
    (folder / "mahavishnu.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_settings()


def test_bad_redis_url_scheme(folder: Path) -> None:
    with pytest.raises(ConfigError, match="redis_url='http://x'"):
        load_settings(redis_url="http://x")


def test_secrets_are_redacted(folder: Path) -> None:
    assert redact_url("redis://user:hunter2@host:6380/0") == "redis://user:***@host:6380/0"
    assert redact_url("rediss://:pw@host/0") == "rediss://:***@host/0"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    settings = load_settings(redis_url="redis://u:topsecret@127.0.0.1:1/0")
    assert "topsecret" not in settings.redis_url_redacted
    with pytest.raises(ConfigError) as exc:
        load_settings(
            mcp_http_token=123, redis_url="redis://u:topsecret@h:1/0", worker_concurrency=0
        )
    assert "topsecret" not in str(exc.value)


def test_timings_that_contradict_each_other_are_rejected(folder: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"heartbeat_interval \(5s\) must be below heartbeat_ttl \(2s\)"
    ):
        load_settings(heartbeat_interval=5, heartbeat_ttl=2)
    with pytest.raises(ConfigError, match="orchestrator_lease_ttl"):
        load_settings(supervise_interval=20, orchestrator_lease_ttl=10)
    with pytest.raises(ConfigError, match=r"pool_default_min_workers \(9\) must not exceed"):
        load_settings(pool_default_min_workers=9, pool_default_max_workers=3)


def test_an_unknown_yaml_key_names_the_file_and_the_nearest_key(folder: Path) -> None:
    (folder / "local.yaml").write_text("redis_ulr: redis://127.0.0.1:6379/0\n")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert str(exc.value) == (
        f"invalid settings: unknown key 'redis_ulr' in {folder / 'local.yaml'} "
        "(did you mean 'redis_url'?)"
    )
    (folder / "local.yaml").write_text("zzz_nothing_like_it: 1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'zzz_nothing_like_it'.*shared/config\.py"):
        load_settings()


def test_the_originals_keys_stay_accepted_in_yaml(folder: Path) -> None:
    (folder / "mahavishnu.yaml").write_text(
        "pools_enabled: false\nmemory_aggregation_enabled: false\nmemory_sync_interval: 5\n"
        "session_buddy_pool_url: http://sb:8678/mcp\nakosha_url: http://ak:8682/mcp\n"
        "pool_routing_strategy: random\ndefault_pool_type: mahavishnu\n"
        "pool_default_min_workers: 2\npool_default_max_workers: 4\n"
    )
    settings = load_settings()
    assert (settings.pools_enabled, settings.memory_sync_interval) == (False, 5.0)
    assert settings.akosha_url == "http://ak:8682/mcp"


def test_an_unknown_env_variable_names_it_and_the_nearest_one(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAHAVISHNU_REDIS_ULR", "redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert str(exc.value) == (
        "invalid settings: unknown environment variable MAHAVISHNU_REDIS_ULR "
        "(did you mean MAHAVISHNU_REDIS_URL?)"
    )
    monkeypatch.delenv("MAHAVISHNU_REDIS_ULR")
    monkeypatch.setenv("MAHAVISHNU_SETTING_DIR", "elsewhere")  # close to a non-setting name
    with pytest.raises(ConfigError, match=r"did you mean MAHAVISHNU_SETTINGS_DIR\?"):
        load_settings()


def test_variables_that_are_not_settings_are_allowed(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert {"MAHAVISHNU_SETTINGS_DIR", "MAHAVISHNU_TEST_REDIS_URL"} <= set(NOT_SETTINGS_ENV)
    for name in NOT_SETTINGS_ENV:
        if name != "MAHAVISHNU_SETTINGS_DIR":  # the fixture points that one at the test folder
            monkeypatch.setenv(name, "1")
    assert load_settings().key_prefix == "mhv:"


def test_every_mahavishnu_variable_the_repository_reads_is_a_setting_or_allowed() -> None:
    repo = Path(__file__).resolve().parent.parent
    sources = [repo / "Makefile", repo / "README.md", repo / "tests" / "conftest.py"]
    for folder in ("shared", "orchestrator", "worker", "bench", "tests/chaos", "docs"):
        sources += [p for p in (repo / folder).rglob("*") if p.suffix in {".py", ".md"}]
    found = {n for p in sources for n in re.findall(r"MAHAVISHNU_[A-Z0-9_]+", p.read_text())}
    settings = {f"MAHAVISHNU_{name.upper()}" for name in Settings.model_fields}
    assert found - settings - set(NOT_SETTINGS_ENV) == set()


def test_an_unknown_keyword_argument_is_an_error(folder: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"unknown key 'key_prefx' given as a keyword.*'key_prefix'"
    ):
        load_settings(key_prefx="a:")


def test_non_utf8_yaml_names_the_file_and_the_byte_offset(folder: Path) -> None:
    (folder / "local.yaml").write_bytes(b"key_prefix: 'caf\xe9:'\n")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    message = str(exc.value)
    assert str(folder / "local.yaml") in message
    assert "not UTF-8" in message and "byte 0xe9 at offset 16" in message
    assert "redis_url" not in message


def test_invalid_yaml_names_the_file_and_the_line(folder: Path) -> None:
    (folder / "mahavishnu.yaml").write_text(
        "key_prefix: 'a:'\nredis_url: [unclosed\nakosha_url: x\n"
    )
    with pytest.raises(ConfigError) as exc:
        load_settings()
    message = str(exc.value)
    assert message.startswith(f"invalid settings: {folder / 'mahavishnu.yaml'} is not valid YAML:")
    assert "line 3" in message and "line 2" in message and "<unicode string>" not in message
    (folder / "mahavishnu.yaml").write_text("a: 1\n  b: 2\n")
    with pytest.raises(ConfigError, match=r"not valid YAML: line 2, column 4: mapping values"):
        load_settings()


def test_redis_command_timeout_is_validated(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().redis_command_timeout == 5.0
    monkeypatch.setenv("MAHAVISHNU_REDIS_COMMAND_TIMEOUT", "0")
    with pytest.raises(ConfigError, match="redis_command_timeout='0' from environment variable"):
        load_settings()
    monkeypatch.setenv("MAHAVISHNU_REDIS_COMMAND_TIMEOUT", "1.5")
    assert load_settings().redis_command_timeout == 1.5
