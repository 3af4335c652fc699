"""The per-slot code path (`redis_cluster: true`): one script per task instead of one per batch.

The suite runs on a standalone server with the batch scripts; this module re-runs the end-to-end
tests that cross every per-slot branch (submit, route, start, finalize, announce, share, retry,
dead letter, cancel, queue full, a full pool refusing routed work) with `redis_cluster` set for
the client, the orchestrator and the worker processes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.config import Settings
from tests import test_orchestrator as orchestration
from tests import test_runtime as runtime
from tests.conftest import make_settings

test_a_prompt_runs_on_a_pool_and_the_result_keeps_the_originals_keys = (
    runtime.test_a_prompt_runs_on_a_pool_and_the_result_keeps_the_originals_keys
)
test_results_are_recorded_and_streams_are_left_empty = (
    runtime.test_results_are_recorded_and_streams_are_left_empty
)
test_a_bounded_ingress_gives_a_clear_queue_full = (
    runtime.test_a_bounded_ingress_gives_a_clear_queue_full
)
test_a_malformed_entry_is_dead_lettered_and_the_worker_keeps_serving = (
    runtime.test_a_malformed_entry_is_dead_lettered_and_the_worker_keeps_serving
)
test_a_failing_task_retries_then_is_dead_lettered = (
    runtime.test_a_failing_task_retries_then_is_dead_lettered
)
test_cancel_a_queued_and_a_running_task = runtime.test_cancel_a_queued_and_a_running_task
test_a_share_to_a_full_inbox_is_dead_lettered_not_dropped = (
    runtime.test_a_share_to_a_full_inbox_is_dead_lettered_not_dropped
)

test_routed_tasks_wait_for_room_and_never_overfill_a_pool = (
    orchestration.test_routed_tasks_wait_for_room_and_never_overfill_a_pool
)


@pytest.fixture
async def settings(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Settings]:
    """The suite's settings with `redis_cluster` on, in this process and its children."""
    from shared.config import settings_env
    from tests.conftest import delete_prefix

    monkeypatch.setenv("MAHAVISHNU_SETTINGS_DIR", str(tmp_path / "no-settings"))
    value = make_settings(prefix, tmp_path, redis_cluster=True)
    for name, env_value in settings_env(value).items():
        monkeypatch.setenv(name, env_value)
    yield value
    await delete_prefix(value.redis_url, prefix)


def test_the_module_runs_the_per_slot_path(settings: Settings) -> None:
    assert settings.redis_cluster
