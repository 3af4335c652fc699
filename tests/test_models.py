"""Validation of tasks and pool specs: bad values are rejected with the field and value named."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.codec import describe_validation_error
from shared.models import (
    MAX_PROMPT_CHARS,
    PoolSpec,
    PoolType,
    TaskKind,
    TaskResult,
    TaskSpec,
    TaskStatus,
    WorkerType,
    executor_runs,
    new_id,
    parse_pool_type,
)

pytestmark = pytest.mark.unit  # needs no Redis: `make test-unit`


def error_text(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return describe_validation_error(exc.value)


def test_a_task_carries_exactly_one_payload() -> None:
    assert TaskSpec(prompt="hi").kind is TaskKind.PROMPT
    assert TaskSpec(command=["echo", "x"]).kind is TaskKind.COMMAND
    assert TaskSpec(call="add", args=[1, 2]).kind is TaskKind.CALL
    with pytest.raises(
        ValidationError, match=r"exactly one of prompt, command or call .*; got none"
    ):
        TaskSpec()
    with pytest.raises(ValidationError, match="got prompt and call"):
        TaskSpec(prompt="x", call="echo")


def test_an_oversized_prompt_is_rejected_naming_the_field() -> None:
    with pytest.raises(ValidationError) as exc:
        TaskSpec(prompt="x" * (MAX_PROMPT_CHARS + 1))
    assert error_text(exc).startswith("prompt=")
    assert "at most 1000000 characters" in error_text(exc)


def test_a_negative_timeout_is_rejected_with_its_value() -> None:
    with pytest.raises(ValidationError) as exc:
        TaskSpec(prompt="x", timeout=-1)
    assert "timeout=-1" in error_text(exc)
    assert "greater than 0" in error_text(exc)


def test_unknown_fields_and_strategies_are_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        TaskSpec(prompt="x", strategy="fastest")
    assert "strategy='fastest'" in error_text(exc)
    with pytest.raises(ValidationError, match="Extra inputs"):
        TaskSpec(prompt="x", code="import os")


def test_affinity_needs_a_key() -> None:
    with pytest.raises(ValidationError, match="affinity_key"):
        TaskSpec(prompt="x", strategy="affinity")


def test_ids_and_labels_are_checked() -> None:
    with pytest.raises(ValidationError, match="pool_id 'a b' is not a valid id"):
        TaskSpec(prompt="x", pool_id="a b")
    with pytest.raises(ValidationError, match="label name"):
        TaskSpec(prompt="x", labels={"bad key": "1"})


def test_command_arguments_may_not_hold_nul() -> None:
    with pytest.raises(ValidationError, match="NUL"):
        TaskSpec(command=["echo", "a\x00b"])


def test_min_workers_above_max_is_rejected_with_both_values() -> None:
    with pytest.raises(
        ValidationError, match=r"min_workers \(5\) must not exceed max_workers \(2\)"
    ):
        PoolSpec(name="p", min_workers=5, max_workers=2)


def test_pool_type_aliases_of_the_original_resolve() -> None:
    assert PoolSpec(name="p", pool_type="mahavishnu").pool_type is PoolType.LOCAL
    assert PoolSpec(name="p", pool_type="session-buddy").pool_type is PoolType.DELEGATED
    assert parse_pool_type("Kubernetes") is PoolType.KUBERNETES


def test_an_unknown_pool_type_names_the_choices() -> None:
    with pytest.raises(ValidationError) as exc:
        PoolSpec(name="p", pool_type="docker")
    text = error_text(exc)
    assert "pool_type='docker'" in text
    assert "mahavishnu" in text and "session-buddy" in text


def test_a_shell_pool_needs_an_allow_list() -> None:
    with pytest.raises(ValidationError, match="allowed_commands"):
        PoolSpec(name="p", worker_type="shell")
    assert PoolSpec(name="p", worker_type="shell", allowed_commands=["echo"]).allowed_commands


def test_registered_functions_must_be_module_colon_function() -> None:
    with pytest.raises(ValidationError, match="module:function"):
        PoolSpec(name="p", functions={"f": "os.system"})


def test_executors_run_only_their_kinds() -> None:
    assert executor_runs(WorkerType.PYTHON, TaskKind.PROMPT)
    assert executor_runs(WorkerType.PYTHON, TaskKind.CALL)
    assert not executor_runs(WorkerType.PYTHON, TaskKind.COMMAND)
    assert executor_runs(WorkerType.SHELL, TaskKind.COMMAND)
    assert not executor_runs(WorkerType.TERMINAL_CLAUDE, TaskKind.CALL)


def test_final_statuses() -> None:
    finals = {s for s in TaskStatus if s.is_final}
    assert finals == {
        TaskStatus.COMPLETED,
        TaskStatus.FAILED,
        TaskStatus.CANCELLED,
        TaskStatus.DEAD_LETTERED,
    }


def test_task_ids_are_unique_and_time_ordered() -> None:
    ids = [TaskSpec(prompt="x").id for _ in range(100)]
    assert len(set(ids)) == 100
    assert ids[0].split("-")[1] <= ids[-1].split("-")[1]


def test_new_ids_keep_their_format_across_random_batches() -> None:
    # more ids than one read of random bytes gives (`_ID_SUFFIX_BATCH`)
    ids = [new_id("t") for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"t-[0-9a-f]{12}-[0-9a-f]{8}", i) for i in ids)
    assert len({i.rsplit("-", 1)[1] for i in ids}) == len(ids)
    assert TaskSpec(id=ids[0], prompt="x").id == ids[0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_repeats_its_parents_next_ids() -> None:
    new_id("t")  # the parent holds unused random suffixes
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without running pytest's teardown
        os.close(read)
        os.write(write, " ".join(new_id("t") for _ in range(20)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    parent = [new_id("t") for _ in range(20)]
    assert len(child) == 20
    assert not {i.rsplit("-", 1)[1] for i in child} & {i.rsplit("-", 1)[1] for i in parent}


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "prompt",
                "command",
                "call",
                "args",
                "timeout",
                "labels",
                "pool_id",
                "max_attempts",
                "x",
            ]
        ),
        st.none()
        | st.integers()
        | st.floats()
        | st.text(max_size=30)
        | st.lists(st.text(max_size=5)),
        max_size=5,
    )
)
def test_any_input_is_a_valid_task_or_a_validation_error(data: dict[str, object]) -> None:
    try:
        task = TaskSpec.model_validate(data)
    except ValidationError as exc:
        assert describe_validation_error(exc)
    else:
        assert task.kind in TaskKind


@given(st.integers(-5, 20), st.integers(-5, 20), st.text(max_size=12))
def test_any_pool_spec_is_valid_or_names_its_problem(low: int, high: int, kind: str) -> None:
    try:
        spec = PoolSpec(name="p", min_workers=low, max_workers=high, pool_type=kind or "local")
    except ValidationError as exc:
        assert describe_validation_error(exc)
    else:
        assert 0 <= spec.min_workers <= spec.max_workers


def test_a_trusted_result_is_the_result_validation_builds() -> None:
    values: dict[str, object] = {
        "task_id": "t-1",
        "pool_id": "p1",
        "worker_id": "w-1",
        "status": TaskStatus.FAILED,
        "output": {"x": [1]},
        "error": "boom",
        "exit_code": 2,
        "attempts": 3,
        "duration": 0.5,
        "started_at": 1.0,
        "finished_at": 1.5,
    }
    trusted = TaskResult.trusted(**values)
    validated = TaskResult.model_validate(values)
    assert trusted == validated == TaskResult.model_construct(**values)
    assert trusted.model_fields_set == validated.model_fields_set
    assert trusted.model_dump(mode="json") == validated.model_dump(mode="json")
    with pytest.raises(TypeError, match="all of its fields"):
        TaskResult.trusted(task_id="t-1", status=TaskStatus.FAILED)
