"""A delegated pool's remote config (shared/remote_config.py) and the reply reading of its bridge
(orchestrator/pools/delegated_remote.py): no Redis, no network."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator.pools.delegated_remote import at_path, json_reply
from shared.models import PoolSpec
from shared.remote_config import RemoteKind, RemoteSpec, fill_arguments

pytestmark = pytest.mark.unit

URL = "http://10.0.0.7:8765/mcp"


def test_a_remote_is_only_for_delegated_pools() -> None:
    remote = {"url": URL, "kind": "session-buddy"}
    spec = PoolSpec(name="d", pool_type="session-buddy", remote=remote)
    assert spec.remote is not None and spec.remote.kind is RemoteKind.SESSION_BUDDY
    with pytest.raises(ValidationError, match="remote is only for 'delegated' pools, not local"):
        PoolSpec(name="l", remote=remote)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"url": "redis://h:6379", "kind": "tool"}, "must be an http:// or https:// URL"),
        ({"url": "http://user:pw@h/mcp", "kind": "tool"}, "must not hold a user or password"),
        ({"url": URL, "kind": "tool"}, "needs tool"),
        ({"url": URL, "kind": "tool", "tool": "t"}, "must pass the task's {prompt}"),
        (
            {"url": URL, "kind": "tool", "tool": "t", "arguments": {"q": "{prompt} {who}"}},
            "unknown placeholder",
        ),
        ({"url": URL, "kind": "mahavishnu", "tool": "t"}, "tool: only for a remote of kind"),
        ({"url": URL, "kind": "session-buddy", "pool": "p"}, "pool: only for a remote of kind"),
        ({"url": URL, "kind": "mahavishnu", "token_env": "sk-abc def"}, "name of an environment"),
        ({"url": URL, "kind": "mahavishnu", "token_env": "A", "token_file": "f"}, "not both"),
        ({"url": URL, "kind": "tool", "tool": "t", "output": "a..b"}, "keys joined by '.'"),
    ],
)
def test_bad_remotes_are_refused_with_the_reason(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RemoteSpec.model_validate(fields)


def test_the_token_comes_from_its_variable_or_file_and_errors_never_show_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    by_env = RemoteSpec(url=URL, kind=RemoteKind.MAHAVISHNU, token_env="FED_TOKEN")
    with pytest.raises(ValueError, match=r"FED_TOKEN .* is not set"):
        by_env.token()
    monkeypatch.setenv("FED_TOKEN", " t0ken \n")
    assert by_env.token() == "t0ken"
    assert "t0ken" not in by_env.model_dump_json()
    path = tmp_path / "token"
    by_file = RemoteSpec(url=URL, kind=RemoteKind.MAHAVISHNU, token_file=str(path))
    with pytest.raises(ValueError, match="cannot be read"):
        by_file.token()
    path.write_text("f1le-token\n")
    assert by_file.token() == "f1le-token"
    assert RemoteSpec(url=URL, kind=RemoteKind.SESSION_BUDDY).token() is None


def test_arguments_are_filled_and_a_whole_timeout_stays_a_number() -> None:
    template = {"q": "{prompt}", "meta": ["id={task_id}", {"t": "{timeout}"}], "n": 3}
    assert fill_arguments(template, "hi {there}", "t-1", 2.5) == {
        "q": "hi {there}",
        "meta": ["id=t-1", {"t": 2.5}],
        "n": 3,
    }


def test_replies_are_read_as_json_and_paths_name_the_missing_step() -> None:
    assert json_reply('{"success": true}') == {"success": True}
    assert json_reply({"result": '{"a": 1}'}) == {"a": 1}
    assert json_reply("plain text") == "plain text"
    reply = {"result": {"items": [{"text": "x"}]}}
    assert at_path(reply, "result.items.0.text") == "x"
    assert at_path(reply, "") is reply
    with pytest.raises(KeyError, match="items"):
        at_path({"result": {}}, "result.items.0")
