"""Settings from YAML files and MAHAVISHNU_* variables; errors name field, value and source."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import load_settings, redact_url
from shared.errors import ConfigError
from shared.models import PoolType, RoutingStrategy


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
