"""The client API's input handling: task and pool validation, deployment defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.client import PoolManager, make_task
from shared.errors import InvalidRequest
from shared.models import PoolType, TaskSpec
from tests.conftest import make_settings

pytestmark = pytest.mark.unit  # needs no Redis: `make test-unit`


async def test_pool_spec_applies_the_deployments_defaults(tmp_path: Path) -> None:
    settings = make_settings(
        "unit:",
        tmp_path,
        pool_default_min_workers=2,
        pool_default_max_workers=5,
        worker_concurrency=7,
        default_pool_type="mahavishnu",
    )
    async with PoolManager(settings) as pools:
        spec = pools.pool_spec(name="p")
        assert (spec.pool_type, spec.min_workers, spec.max_workers, spec.concurrency) == (
            PoolType.LOCAL,
            2,
            5,
            7,
        )
        wide = pools.pool_spec("local", {"name": "w", "min_workers": 8}, concurrency=None)
        assert (wide.min_workers, wide.max_workers, wide.concurrency) == (8, 8, 7)
        with pytest.raises(
            InvalidRequest, match=r"min_workers \(6\) must not exceed max_workers \(3\)"
        ):
            pools.pool_spec(name="bad", min_workers=6, max_workers=3)
        with pytest.raises(InvalidRequest, match="pool_type='docker'"):
            pools.pool_spec("docker", name="x")


def test_make_task_names_the_bad_field() -> None:
    assert make_task({"prompt": "x"}, pool_id="p1").pool_id == "p1"
    task = TaskSpec(prompt="y")
    assert make_task(task) is task
    with pytest.raises(
        InvalidRequest, match=r"invalid task: timeout=0: Input should be greater than 0"
    ):
        make_task({"prompt": "x", "timeout": 0})
