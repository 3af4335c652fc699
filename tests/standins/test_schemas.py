"""The stand-ins cannot drift from the real servers: every tool they list has the real name, the
real description and the real input schema (parameter names, types, defaults, required ones,
unknown parameters refused), compared with the recorded real `tools/list` in
tests/counterparts/. The listing is read through the real SDK client, in process."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from mcp import Client

from tests.standins.schema import recorded_tools, schema_differences
from tests.standins.server import make

pytestmark = pytest.mark.unit

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


@pytest.mark.parametrize("server", ["session-buddy", "akosha"])
async def test_every_stand_in_tool_has_the_real_name_and_input_schema(server: str) -> None:
    tools = await listed(server)
    assert CONTRACT[server] <= {tool["name"] for tool in tools}
    assert schema_differences(recorded_tools(server), tools) == []


@pytest.mark.parametrize("server", ["session-buddy", "akosha"])
async def test_the_listing_is_the_recorded_one_word_for_word(server: str) -> None:
    recorded = recorded_tools(server)
    for tool in await listed(server):
        real = recorded[tool["name"]]
        assert tool["description"] == real["description"]
        assert tool["inputSchema"] == real["inputSchema"], tool["name"]
        assert tool.get("outputSchema") is None  # the real tools list none either


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


def test_titles_and_descriptions_are_not_differences() -> None:
    recorded = recorded_tools("akosha")
    worded = copy.deepcopy(recorded["search_all_systems"])
    worded["inputSchema"]["title"] = "search_all_systemsArguments"
    for prop in worded["inputSchema"]["properties"].values():
        prop["title"] = "Some Title"
        prop.pop("description", None)
    assert schema_differences(recorded, [worded]) == []
