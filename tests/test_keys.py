"""Key names: one prefix, pool keys under one Cluster hash tag."""

from __future__ import annotations

import pytest

from shared.keys import Keys, hash_tag

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
        keys.pool_task("p1", "t1"),
        keys.replies("c1"),
        keys.idempotency("k"),
    ]
    assert all(n.startswith("app1:") for n in names)
    assert len(set(names)) == len(names)


def test_design_names() -> None:
    keys = Keys()
    assert keys.ingress == "mhv:{ingress}:tasks"
    assert keys.control == "mhv:{ingress}:control"
    assert keys.pool_tasks("P") == "mhv:pool:{P}:tasks"
    assert keys.pool("P") == "mhv:pool:{P}"
    assert keys.task("T") == "mhv:{ingress}:task:T"
    assert keys.pool_task("P", "T") == "mhv:pool:{P}:task:T"
    assert keys.replies("C") == "mhv:replies:{C}"
    assert keys.events == "mhv:{events}"
    assert keys.dlq == "mhv:{dlq}"


def test_a_pools_keys_share_one_hash_tag() -> None:
    keys = Keys()
    tagged = [
        keys.pool("p"),
        keys.pool_tasks("p"),
        keys.pool_inbox("p"),
        keys.pool_load("p"),
        keys.pool_memory("p"),
        keys.pool_workers("p"),
        keys.pool_lease("p"),
        keys.pool_task("p", "t"),
    ]
    assert {hash_tag(k) for k in tagged} == {"p"}


def test_the_ingress_control_and_look_ups_share_a_slot_and_markers_follow_their_stream() -> None:
    keys = Keys()
    assert hash_tag(keys.ingress) == hash_tag(keys.control) == hash_tag(keys.task("t"))
    for stream in (keys.events, keys.dlq, keys.replies("c"), keys.pool_inbox("p")):
        assert hash_tag(keys.sent_marker(stream, "abc")) == hash_tag(stream)
    with pytest.raises(ValueError, match="no hash tag"):
        keys.sent_marker("mhv:untagged", "abc")


def test_hash_tag_follows_redis_cluster() -> None:
    assert hash_tag("plain") == "plain"
    assert hash_tag("a{b}c") == "b"
    assert hash_tag("a{}b{c}") == "a{}b{c}"  # an empty first tag: the whole key
    assert hash_tag("a{b") == "a{b"


def test_kind_of_names_our_keys() -> None:
    keys = Keys()
    assert keys.kind_of(keys.pool_tasks("p")) == "pool_tasks"
    assert keys.kind_of(keys.pool("p")) == "pool"
    assert keys.kind_of(keys.task("t")) == "task"
    assert keys.kind_of(keys.pool_task("p", "t")) == "pool_task"
    assert keys.kind_of(keys.ingress) == "tasks"
    assert keys.kind_of(keys.events) == "events"
    assert keys.kind_of(keys.sent_marker(keys.events, "x")) == "events_sent"
    assert keys.kind_of("other:thing") == ""
