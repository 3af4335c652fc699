"""The `session_buddy` / `akosha` fixtures: a stand-in process per service that a test can kill
and start again on the same URL (an outage), emptied between tests; the real server instead when
its URL variable is set, which a test cannot stop."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.mcp.client import RemoteMCP
from shared.errors import RemoteUnavailable
from tests.standins.fixtures import REAL_URL_VARIABLES, Counterpart, counterpart


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
