"""The stand-in contract.

The stand-ins cannot drift from the real servers: every tool they list has the real name, the
real description and the real input schema (parameter names, types, defaults, required ones,
unknown parameters refused), compared with the recorded real `tools/list` in
tests/counterparts/ (the listing read through the real SDK client, in process).

The `session_buddy` / `akosha` fixtures: a stand-in process per service that a test can kill
and start again on the same URL (an outage), emptied between tests; the real server instead when
its URL variable is set, which a test cannot stop."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from orchestrator.mcp.client import RemoteMCP
from shared.errors import RemoteUnavailable
from tests.standins.fixtures import REAL_URL_VARIABLES, Counterpart, counterpart
from tests.standins.schema import recorded_tools, schema_differences
from tests.standins.server import make

CONTRACT = {
    "session-buddy": {
        "create_pool", "execute_on_pool", "execute_batch_on_pool", "check_pool_health",
        "get_pool_status", "list_pools", "delete_pool", "store_reflection", "quick_search",
        "search_by_source_session", "reflection_stats",
    },
    "akosha": {
        "store_memory", "batch_store_memories", "generate_embedding",
        "generate_batch_embeddings", "search_all_systems",
    },
}  # fmt: skip
"""The tools the project calls (the stand-in contract); a stand-in may offer a few more."""


async def listed(server: str) -> list[dict[str, Any]]:
    async with Client(make(server)) as client:
        tools = (await client.list_tools()).tools
    return [
        {"name": t.name, "description": t.description, "inputSchema": t.input_schema} for t in tools
    ]


@pytest.mark.unit
@pytest.mark.parametrize("server", ["session-buddy", "akosha"])
async def test_every_stand_in_tool_has_the_real_name_and_input_schema(server: str) -> None:
    tools = await listed(server)
    assert CONTRACT[server] <= {tool["name"] for tool in tools}
    assert schema_differences(recorded_tools(server), tools) == []


@pytest.mark.unit
@pytest.mark.parametrize("server", ["session-buddy", "akosha"])
async def test_the_listing_is_the_recorded_one_word_for_word(server: str) -> None:
    recorded = recorded_tools(server)
    for tool in await listed(server):
        real = recorded[tool["name"]]
        assert tool["description"] == real["description"]
        assert tool["inputSchema"] == real["inputSchema"], tool["name"]
        assert tool.get("outputSchema") is None  # the real tools list none either


@pytest.mark.unit
def test_schema_differences_names_each_kind_of_drift() -> None:
    recorded = recorded_tools("session-buddy")
    drifted = copy.deepcopy(recorded["execute_on_pool"])
    schema = drifted["inputSchema"]
    schema["properties"]["timeout"] = {"type": "integer", "default": 30}
    del schema["properties"]["context"]
    schema["properties"]["priority"] = {"type": "string"}
    schema["required"] = ["pool_id"]
    schema["additionalProperties"] = True
    renamed = {"name": "run_on_pool", "inputSchema": {}}
    assert schema_differences(recorded, [drifted, renamed]) == [
        "execute_on_pool: parameter 'context' is missing (real: "
        '{"anyOf": [{"additionalProperties": true, "type": "object"}, {"type": "null"}], "default": null})',
        "execute_on_pool: parameter 'priority' does not exist on the real server",
        "execute_on_pool: parameter 'timeout': anyOf is absent, the real one "
        '[{"type": "number"}, {"type": "null"}]',
        "execute_on_pool: parameter 'timeout': default is 30, the real one null",
        "execute_on_pool: parameter 'timeout': type is \"integer\", the real one absent",
        "execute_on_pool: required parameters are ['pool_id'], the real ones ['pool_id', 'prompt']",
        "execute_on_pool: schema additionalProperties is true, the real one false",
        "run_on_pool: the real server has no tool of this name",
    ]


@pytest.mark.unit
def test_titles_and_descriptions_are_not_differences() -> None:
    recorded = recorded_tools("akosha")
    worded = copy.deepcopy(recorded["search_all_systems"])
    worded["inputSchema"]["title"] = "search_all_systemsArguments"
    for prop in worded["inputSchema"]["properties"].values():
        prop["title"] = "Some Title"
        prop.pop("description", None)
    assert schema_differences(recorded, [worded]) == []


async def test_a_stand_in_is_killed_and_started_again_on_the_same_url(
    session_buddy: Counterpart,
) -> None:
    if session_buddy.real:
        pytest.skip("needs the stand-in")
    url, pid = session_buddy.url, session_buddy.pid
    async with RemoteMCP(url, timeout=10) as remote:
        created = await remote.call("create_pool", {"pool_id": "before-outage"})
        assert created["success"] is True
    await session_buddy.stop()
    assert session_buddy.pid is None
    with pytest.raises(RemoteUnavailable, match="not reachable"):
        async with RemoteMCP(url, timeout=5):
            pass
    await session_buddy.start()
    assert session_buddy.url == url and session_buddy.pid not in (None, pid)
    async with RemoteMCP(url, timeout=10) as remote:
        assert (await remote.call("list_pools"))["pools"] == []  # a restart loses its pools


async def test_each_test_gets_an_empty_stand_in(akosha: Counterpart) -> None:
    if akosha.real:
        pytest.skip("needs the stand-in")
    async with RemoteMCP(akosha.url, timeout=10) as remote:
        vector = (await remote.call("generate_embedding", {"text": "left behind"}))["embedding"]
        memory = {"source": "mahavishnu"}
        await remote.call(
            "store_memory",
            {"memory_id": "m", "text": "left behind", "embedding": vector, "metadata": memory},
        )
        assert (await remote.call("search_all_systems", {"query": "left behind"}))["mode"] == "real"
    await akosha.reset()
    async with RemoteMCP(akosha.url, timeout=10) as remote:
        found = await remote.call("search_all_systems", {"query": "left behind"})
        assert found["mode"] == "fallback"


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(REAL_URL_VARIABLES))
async def test_a_real_server_is_used_as_is_and_cannot_be_stopped(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REAL_URL_VARIABLES[name], "http://127.0.0.1:9/mcp")
    service = counterpart(name, tmp_path)
    assert (service.real, service.url, service.pid) == (True, "http://127.0.0.1:9/mcp", None)
    with pytest.raises(pytest.skip.Exception, match="real server"):
        await service.stop()
    with pytest.raises(pytest.skip.Exception, match="real server"):
        await service.start()
