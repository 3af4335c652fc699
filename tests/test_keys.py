"""Key names: one prefix, pool keys under one Cluster hash tag."""

from __future__ import annotations

import pytest

from shared.keys import Keys

pytestmark = pytest.mark.unit  # needs no Redis: `make test-unit`


def test_every_key_starts_with_the_prefix() -> None:
    keys = Keys("app1:")
    names = [
        keys.ingress,
        keys.control,
        keys.pools,
        keys.events,
        keys.delayed,
        keys.dlq,
        keys.pool("p1"),
        keys.pool_tasks("p1"),
        keys.pool_inbox("p1"),
        keys.pool_load("p1"),
        keys.pool_memory("p1"),
        keys.pool_workers("p1"),
        keys.pool_lease("p1"),
        keys.worker("w1"),
        keys.task("t1"),
        keys.replies("c1"),
        keys.idempotency("k"),
    ]
    assert all(n.startswith("app1:") for n in names)
    assert len(set(names)) == len(names)


def test_design_names() -> None:
    keys = Keys()
    assert keys.ingress == "mhv:tasks"
    assert keys.pool_tasks("P") == "mhv:pool:{P}:tasks"
    assert keys.pool("P") == "mhv:pool:{P}"
    assert keys.task("T") == "mhv:task:T"
    assert keys.replies("C") == "mhv:replies:C"


def test_a_pools_keys_share_one_hash_tag() -> None:
    keys = Keys()
    tagged = [keys.pool("p"), keys.pool_tasks("p"), keys.pool_load("p"), keys.pool_memory("p")]
    assert {k[k.index("{") : k.index("}") + 1] for k in tagged} == {"{p}"}


def test_kind_of_names_our_keys() -> None:
    keys = Keys()
    assert keys.kind_of(keys.pool_tasks("p")) == "pool_tasks"
    assert keys.kind_of(keys.pool("p")) == "pool"
    assert keys.kind_of(keys.task("t")) == "task"
    assert keys.kind_of("other:thing") == ""
