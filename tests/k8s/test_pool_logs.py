"""`mahavishnu pool logs` for pools that are not on Kubernetes (those are read through the API
server in test_kubernetes_pool.py): a local pool's log files, and the errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.pools.logs import read_pool_logs
from shared.config import load_settings
from shared.errors import InvalidRequest
from shared.models import PoolSpec

pytestmark = pytest.mark.unit


async def test_local_pool_logs_are_its_workers_files(tmp_path: Path) -> None:
    settings = load_settings(embedded_broker_dir=tmp_path)
    spec = PoolSpec(name="p")
    folder = tmp_path / "logs" / spec.id
    folder.mkdir(parents=True)
    (folder / "w1.log").write_text("one\ntwo\n\nthree\n")
    (folder / "w2.log").write_text("alone\n")
    found = await read_pool_logs(settings, spec, None, 2, log_dir=tmp_path / "logs")
    assert found == {"w1": ["two", "three"], "w2": ["alone"]}
    assert await read_pool_logs(settings, spec, "w2", 5, log_dir=tmp_path / "logs") == {
        "w2": ["alone"]
    }
    with pytest.raises(InvalidRequest, match="has no worker 'w3' \\(its workers: w1, w2\\)"):
        await read_pool_logs(settings, spec, "w3", 5, log_dir=tmp_path / "logs")


async def test_a_pool_type_without_worker_logs_here_is_refused(tmp_path: Path) -> None:
    settings = load_settings(embedded_broker_dir=tmp_path)
    spec = PoolSpec(name="p", pool_type="delegated")
    with pytest.raises(InvalidRequest, match="is a delegated pool: no worker logs here"):
        await read_pool_logs(settings, spec, None, 5)
