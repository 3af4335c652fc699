"""Pool supervision (orchestrator/supervisor.py) decided from data, without Redis: who counts as
serving, local, external, draining or stuck; capacity and in-flight work; the status and target
a pool should have; what its load hash says; what a closing pool does with what is left.

The Redis is tests/unit_fakes.py's FakeRedis, answering the supervisor with redis-py 8 RESP2
reply shapes (`decode_responses=False`): HGETALL a dict of bytes, SMEMBERS a set of bytes, XLEN
and scripts an int, GET bytes or None, XRANGE `[(id, {field: value})]`. No pool backend is
configured (`backends={}`), so no process is started."""

from __future__ import annotations

from typing import Any

import pytest

import orchestrator.supervisor as supervisor_module
from orchestrator.reclaim import Reclaimer
from orchestrator.records import Records
from orchestrator.supervisor import AUTOSCALE_COOLDOWN, PoolSupervisor, PoolView, _workers_detail
from shared.codec import PoolClosed, StatusUpdate, TaskDelegate, decode, encode
from shared.config import Settings
from shared.finals import FinalResult
from shared.keys import WORKER_GROUP
from shared.models import PoolSpec, PoolStatus, TaskSpec, TaskStatus
from shared.scripts import Scripts
from shared.task_state import iso_time
from tests import unit_fakes
from tests.unit_fakes import FakeRedis, as_reply

pytestmark = pytest.mark.unit  # needs no Redis: `make test-unit`

OWNER = "o-self"
# fixtures shared with the other unit tests (pytest finds them under these names)
offline_settings = unit_fakes.offline_settings
finalized = unit_fakes.finalized
announced = unit_fakes.announced_in(supervisor_module)


class FakeClock:
    """Stands in for the supervisor's `time` module: both clocks move only when told."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(supervisor_module, "time", fake)
    return fake


def supervisor(redis: FakeRedis, settings: Settings) -> PoolSupervisor:
    records = Records(redis, Scripts(redis), settings, OWNER)
    return PoolSupervisor(records, Reclaimer(records, 2000), {}, lease_ms=2000)


def beat(
    concurrency: int = 4,
    in_flight: int = 0,
    draining_since: float = 0.0,
    drain_deadline: float = 40.0,
) -> dict[str, str]:
    """A worker's heartbeat hash as `Worker._queue_heartbeat` writes it."""
    return {
        "concurrency": str(concurrency),
        "in_flight": str(in_flight),
        "status": "draining" if draining_since else "running",
        "draining_since": repr(draining_since),
        "drain_deadline": repr(drain_deadline),
    }


def view(
    status: PoolStatus = PoolStatus.RUNNING,
    *,
    target: int | None = None,
    local: set[str] | None = None,
    backlog: int = 0,
    lease: str = OWNER,
    members: set[str] | None = None,
    spec: PoolSpec | None = None,
    **workers: dict[str, str],
) -> PoolView:
    raw = {} if target is None else {"target_workers": str(target)}
    return PoolView(
        spec=spec or PoolSpec(id="p1", name="pool1", min_workers=1, max_workers=10),
        status=status,
        raw=raw,
        lease=lease,
        live_workers=dict(workers),
        members=set(workers) if members is None else members,
        backlog=backlog,
        local=set(workers) if local is None else local,
    )


# --- who counts ---------------------------------------------------------------------------


def test_a_live_worker_serves_unless_it_is_draining() -> None:
    pool = view(w1=beat(), w2=beat(draining_since=5.0))
    assert set(pool.serving) == {"w1"}
    assert pool.draining == 1


def test_local_workers_are_serving_ones_the_backend_started_and_the_rest_are_external() -> None:
    pool = view(local={"w1", "w3"}, w1=beat(), w2=beat(), w3=beat(draining_since=5.0))
    assert pool.serving_local == 1  # w3 is local but draining: it serves no more
    assert pool.external == 1  # w2, started elsewhere
    assert pool.serving_local + pool.external == len(pool.serving)


def test_a_started_worker_without_a_live_heartbeat_counts_for_nothing() -> None:
    pool = view(local={"w1", "w-starting"}, w1=beat())
    assert (pool.serving_local, pool.external, pool.draining) == (1, 0, 0)


def test_a_worker_is_stuck_once_draining_past_its_own_drain_deadline() -> None:
    pool = view(
        early=beat(draining_since=100.0, drain_deadline=40.0),
        late=beat(draining_since=100.0, drain_deadline=10.0),
        serving=beat(),
    )
    assert pool.stuck(now=130.0) == 1  # only `late`: 30 s past a 10 s deadline
    assert pool.stuck(now=140.0) == 1  # `early` at exactly its deadline is not stuck yet
    assert pool.stuck(now=140.5) == 2


@pytest.mark.parametrize(
    "fields",
    [
        {"status": "draining"},  # no times: an old worker's beat
        {"status": "draining", "draining_since": "0.0", "drain_deadline": "40.0"},
        {"status": "draining", "draining_since": "100.0", "drain_deadline": "0"},
        {"status": "draining", "draining_since": "soon", "drain_deadline": "40.0"},
        {"status": "running", "draining_since": "100.0", "drain_deadline": "1.0"},
    ],
)
def test_a_worker_without_a_usable_drain_start_and_deadline_is_never_stuck(
    fields: dict[str, str],
) -> None:
    assert view(w1=fields).stuck(now=10**9) == 0


def test_capacity_is_the_concurrency_of_serving_workers_only() -> None:
    pool = view(
        w1=beat(concurrency=4), w2=beat(concurrency=8), w3=beat(concurrency=16, draining_since=1.0)
    )
    assert pool.capacity == 12
    assert view(w1={"status": "running"}).capacity == 0  # a beat without concurrency adds none


def test_in_flight_counts_the_running_tasks_of_draining_workers_too() -> None:
    pool = view(w1=beat(in_flight=3), w2=beat(in_flight=2, draining_since=1.0))
    assert pool.in_flight == 5


def test_the_target_is_the_pools_target_field_else_its_minimum() -> None:
    spec = PoolSpec(id="p1", name="pool1", min_workers=3, max_workers=10)
    assert view(spec=spec).target == 3
    assert view(spec=spec, target=7).target == 7
    assert view(spec=spec, target=0).target == 0  # scaled to zero is a target, not "unset"


def test_the_pools_owned_are_those_whose_lease_this_orchestrator_holds(
    offline_settings: Settings,
) -> None:
    sup = supervisor(FakeRedis(), offline_settings)
    sup.pools = {"p1": view(lease=OWNER), "p2": view(lease="o-other"), "p3": view(lease="")}
    assert sup.owned() == ["p1"]


# --- the status a pool should have -----------------------------------------------------------

wanted = PoolSupervisor._wanted_status


@pytest.mark.parametrize(
    "status", [PoolStatus.STARTING, PoolStatus.RUNNING, PoolStatus.DEGRADED, PoolStatus.SCALING]
)
def test_a_pool_with_its_target_of_local_workers_serving_runs(status: PoolStatus) -> None:
    assert wanted(view(status, target=2, w1=beat(), w2=beat())) is PoolStatus.RUNNING


@pytest.mark.parametrize(
    "status", [PoolStatus.STARTING, PoolStatus.RUNNING, PoolStatus.DEGRADED, PoolStatus.SCALING]
)
def test_a_pool_scaled_to_zero_runs_idle(status: PoolStatus) -> None:
    assert wanted(view(status, target=0)) is PoolStatus.RUNNING


def test_a_starting_pool_stays_starting_until_a_worker_serves() -> None:
    assert wanted(view(PoolStatus.STARTING, target=2)) is PoolStatus.STARTING
    draining_only = view(PoolStatus.STARTING, target=2, w1=beat(draining_since=1.0))
    assert wanted(draining_only) is PoolStatus.STARTING
    external = view(PoolStatus.STARTING, target=2, local=set(), w9=beat())
    assert wanted(external) is PoolStatus.RUNNING  # an external worker serves it already


def test_a_running_pool_that_nobody_serves_is_degraded() -> None:
    assert wanted(view(PoolStatus.RUNNING, target=2)) is PoolStatus.DEGRADED
    draining_only = view(PoolStatus.RUNNING, target=2, w1=beat(draining_since=1.0))
    assert wanted(draining_only) is PoolStatus.DEGRADED


def test_a_pool_below_target_runs_while_any_worker_serves_it() -> None:
    assert wanted(view(PoolStatus.DEGRADED, target=3, w1=beat())) is PoolStatus.RUNNING
    external = view(PoolStatus.DEGRADED, target=3, local=set(), w9=beat())
    assert wanted(external) is PoolStatus.RUNNING


def test_a_scaling_pool_stays_scaling_until_its_local_workers_match_the_target() -> None:
    assert wanted(view(PoolStatus.SCALING, target=3, w1=beat())) is PoolStatus.SCALING  # up
    three = view(PoolStatus.SCALING, target=2, w1=beat(), w2=beat(), w3=beat())
    assert wanted(three) is PoolStatus.SCALING  # down
    three.raw["target_workers"] = "3"
    assert wanted(three) is PoolStatus.RUNNING


def test_external_workers_do_not_count_towards_a_scaling_pools_target() -> None:
    pool = view(PoolStatus.SCALING, target=2, local={"w1"}, w1=beat(), w9=beat())
    assert wanted(pool) is PoolStatus.SCALING


def test_the_status_detail_counts_local_workers_against_the_target() -> None:
    assert _workers_detail(view(target=2, w1=beat(), w2=beat())) == "2/2 workers"
    pool = view(target=3, local={"w1", "w2"}, w1=beat(), w2=beat(draining_since=1.0), w9=beat())
    assert _workers_detail(pool) == "1/3 workers + 1 external, 1 draining"


async def test_a_status_already_held_is_not_written_again(offline_settings: Settings) -> None:
    redis = FakeRedis()
    await supervisor(redis, offline_settings)._set_status(view(), PoolStatus.RUNNING, "")
    assert redis.log == []


async def test_a_status_change_expects_the_status_seen_and_says_who_serves(
    offline_settings: Settings,
) -> None:
    redis = FakeRedis(set_pool_status=1)
    pool = view(PoolStatus.RUNNING, target=2, w1=beat())
    await supervisor(redis, offline_settings)._set_status(pool, PoolStatus.DEGRADED, "")

    [(_, (keys, args), _)] = redis.calls("set_pool_status")
    assert keys == [offline_settings.keys.pool("p1")]
    assert args == ["running", "status", "degraded", "detail", "1/2 workers"]
    assert pool.status is PoolStatus.DEGRADED


async def test_a_status_change_refused_by_redis_leaves_the_view_as_it_was(
    offline_settings: Settings,
) -> None:
    redis = FakeRedis(set_pool_status=0)  # the pool moved on (e.g. to closing) meanwhile
    pool = view(PoolStatus.RUNNING)
    await supervisor(redis, offline_settings)._set_status(pool, PoolStatus.FAILED, "no python")
    [(_, (_, args), _)] = redis.calls("set_pool_status")
    assert args[-2:] == ["detail", "no python"]  # a given detail wins over the worker count
    assert pool.status is PoolStatus.RUNNING


# --- the target ------------------------------------------------------------------------------


def autoscaled(**kw: Any) -> PoolSpec:
    values: dict[str, Any] = {
        "id": "p1",
        "name": "pool1",
        "min_workers": 1,
        "max_workers": 5,
        "concurrency": 2,
        "auto_scale": True,
    }
    values.update(kw)
    return PoolSpec(**values)


def test_without_auto_scale_the_target_stays_whatever_the_backlog(
    offline_settings: Settings, clock: FakeClock
) -> None:
    sup = supervisor(FakeRedis(), offline_settings)
    pool = view(spec=autoscaled(auto_scale=False), target=2, backlog=10_000)
    assert sup._autoscale(pool) == 2
    pool.backlog = 0
    clock.now += AUTOSCALE_COOLDOWN * 10
    assert sup._autoscale(pool) == 2


def test_auto_scale_grows_at_once_to_the_backlog_per_worker_within_the_bounds(
    offline_settings: Settings, clock: FakeClock
) -> None:
    sup = supervisor(FakeRedis(), offline_settings)
    per_worker = 2 * offline_settings.autoscale_backlog_per_worker
    assert sup._autoscale(view(spec=autoscaled(), target=1, backlog=per_worker * 3 - 1)) == 3
    assert sup._autoscale(view(spec=autoscaled(), target=1, backlog=per_worker * 100)) == 5
    assert sup._autoscale(view(spec=autoscaled(min_workers=2), target=2, backlog=0)) == 2


def test_auto_scale_shrinks_one_worker_per_cooldown_of_low_backlog(
    offline_settings: Settings, clock: FakeClock
) -> None:
    sup = supervisor(FakeRedis(), offline_settings)
    pool = view(spec=autoscaled(), target=4, backlog=0)
    assert sup._autoscale(pool) == 4  # the backlog just became low
    clock.now += AUTOSCALE_COOLDOWN - 0.1
    assert sup._autoscale(pool) == 4
    clock.now += 0.1
    assert sup._autoscale(pool) == 3
    pool.raw["target_workers"] = "3"
    clock.now += AUTOSCALE_COOLDOWN - 0.1
    assert sup._autoscale(pool) == 3  # each step waits a whole cooldown of its own
    clock.now += 0.1
    assert sup._autoscale(pool) == 2


def test_a_backlog_back_at_target_restarts_the_shrink_cooldown(
    offline_settings: Settings, clock: FakeClock
) -> None:
    sup = supervisor(FakeRedis(), offline_settings)
    per_worker = 2 * offline_settings.autoscale_backlog_per_worker
    pool = view(spec=autoscaled(), target=3, backlog=0)
    assert sup._autoscale(pool) == 3
    clock.now += AUTOSCALE_COOLDOWN - 1
    pool.backlog = per_worker * 3  # busy again, briefly
    assert sup._autoscale(pool) == 3
    pool.backlog = 0
    clock.now += 1
    assert sup._autoscale(pool) == 3  # the low-backlog time counts from now, not from before
    clock.now += AUTOSCALE_COOLDOWN
    assert sup._autoscale(pool) == 2


# --- the load hash ---------------------------------------------------------------------------


async def test_the_load_hash_says_who_serves_and_what_waits(
    offline_settings: Settings, clock: FakeClock
) -> None:
    redis = FakeRedis()
    sup = supervisor(redis, offline_settings)
    sup.pools = {
        "p1": view(
            local={"w1", "w2"},
            backlog=10,
            w1=beat(concurrency=4, in_flight=3),
            w2=beat(concurrency=4, in_flight=1, draining_since=clock.now - 100, drain_deadline=40),
            w9=beat(concurrency=2, in_flight=2),
        )
    }
    await sup.write_load()

    [(_, (key,), kwargs)] = redis.calls("hset")
    assert key == offline_settings.keys.pool_load("p1")
    assert kwargs["mapping"] == {
        "workers": 2,
        "local_workers": 1,
        "external_workers": 1,
        "draining": 1,
        "stuck": 1,
        "capacity": 6,
        "in_flight": 6,
        "queued": 4,  # the backlog less what is running
        "updated_at": repr(clock.now),
        "updated": iso_time(clock.now),  # the same moment, readable
    }


async def test_the_load_hash_never_reports_a_negative_queue(
    offline_settings: Settings, clock: FakeClock
) -> None:
    redis = FakeRedis()
    sup = supervisor(redis, offline_settings)
    sup.pools = {"p1": view(backlog=1, w1=beat(in_flight=3))}
    await sup.write_load()
    [(_, _, kwargs)] = redis.calls("hset")
    assert kwargs["mapping"]["queued"] == 0


async def test_only_owned_pools_get_a_load_hash_and_members_without_a_heartbeat_are_dropped(
    offline_settings: Settings, clock: FakeClock
) -> None:
    redis = FakeRedis()
    sup = supervisor(redis, offline_settings)
    sup.pools = {
        "p1": view(members={"w1", "w-dead"}, w1=beat()),
        "p2": view(lease="o-other", members={"w-x"}),
    }
    await sup.write_load()
    assert [args[0] for _, args, _ in redis.calls("hset")] == [
        offline_settings.keys.pool_load("p1")
    ]
    assert [args for _, args, _ in redis.calls("srem")] == [
        (offline_settings.keys.pool_workers("p1"), "w-dead")
    ]


async def test_no_owned_pool_writes_nothing(offline_settings: Settings, clock: FakeClock) -> None:
    redis = FakeRedis()
    sup = supervisor(redis, offline_settings)
    sup.pools = {"p2": view(lease="o-other")}
    await sup.write_load()
    assert redis.log == []


# --- reading the pools -----------------------------------------------------------------------


async def test_refresh_reads_each_pool_its_lease_backlog_and_the_workers_with_a_heartbeat(
    offline_settings: Settings,
) -> None:
    keys = offline_settings.keys
    good = PoolSpec(id="p1", name="pool1")
    hashes: dict[str, dict[bytes, bytes]] = {
        keys.pool("p1"): {
            b"spec": good.model_dump_json().encode(),
            b"status": b"running",
            b"target_workers": b"2",
        },
        keys.pool("p2"): {b"status": b"running"},  # no spec: half-written
        keys.pool("p3"): {b"spec": b"{not json", b"status": b"running"},
        keys.pool("p4"): {b"spec": good.model_dump_json().encode(), b"status": b"sleeping"},
        keys.worker("w1"): {b"concurrency": b"4", b"status": b"running"},
    }
    sets: dict[str, set[bytes]] = {
        keys.pools: {b"p1", b"p2", b"p3", b"p4"},
        keys.pool_workers("p1"): {b"w1", b"w-gone"},
    }
    redis = FakeRedis(
        smembers=lambda key: sets.get(key, set()),
        hgetall=lambda key: hashes.get(key, {}),
        xlen=lambda key: 7 if key == keys.pool_tasks("p1") else 0,
        acquire_lease=1,
        get=lambda key: b"o-other" if key == keys.pool_lease("p1") else None,
    )
    sup = supervisor(redis, offline_settings)
    await sup.refresh()

    assert list(sup.pools) == ["p1"]  # pools that cannot be read are left out
    pool = sup.pools["p1"]
    assert (pool.spec, pool.status, pool.target) == (good, PoolStatus.RUNNING, 2)
    assert (pool.lease, pool.backlog) == ("o-other", 7)
    assert pool.members == {"w1", "w-gone"}
    assert pool.live_workers == {"w1": {"concurrency": "4", "status": "running"}}
    leases = [keys for _, (keys, _), _ in redis.calls("acquire_lease")]
    assert leases == [[offline_settings.keys.pool_lease(p)] for p in ("p1", "p2", "p3", "p4")]
    [(_, (key, lease_ms), _)] = redis.calls("pexpire")
    assert (key, lease_ms) == (keys.orchestrator(OWNER), 2000)  # its own heartbeat


# --- supervising and closing -----------------------------------------------------------------


@pytest.mark.parametrize("status", [PoolStatus.CLOSED, PoolStatus.FAILED])
async def test_a_pool_that_takes_no_work_and_is_not_closing_is_left_alone(
    offline_settings: Settings, status: PoolStatus
) -> None:
    redis = FakeRedis()
    await supervisor(redis, offline_settings).supervise(view(status, w1=beat()), None)
    assert redis.log == []


async def test_a_pool_of_a_type_with_no_backend_here_is_left_alone(
    offline_settings: Settings,
) -> None:
    redis = FakeRedis()
    await supervisor(redis, offline_settings).supervise(view(PoolStatus.RUNNING), None)
    assert redis.log == []


async def test_a_closing_pool_waits_while_its_workers_still_heartbeat(
    offline_settings: Settings, clock: FakeClock
) -> None:
    redis = FakeRedis()
    sup = supervisor(redis, offline_settings)
    pool = view(PoolStatus.CLOSING, w1=beat(draining_since=clock.now))
    await sup.supervise(pool, None)
    limit = offline_settings.drain_grace + offline_settings.heartbeat_ttl + 5
    clock.now += limit - 0.1
    await sup.supervise(pool, None)
    assert redis.log == []


async def test_a_closing_pool_closes_after_the_drain_limit_even_with_workers_left(
    offline_settings: Settings, clock: FakeClock
) -> None:
    redis = FakeRedis(xrange=[])
    sup = supervisor(redis, offline_settings)
    sup.pools = {"p1": (pool := view(PoolStatus.CLOSING, w1=beat(draining_since=clock.now)))}
    await sup.supervise(pool, None)
    clock.now += offline_settings.drain_grace + offline_settings.heartbeat_ttl + 5
    await sup.supervise(pool, None)
    assert redis.calls("srem") and "p1" not in sup.pools


async def test_a_closed_pool_loses_its_keys_and_lease_and_its_hash_expires(
    offline_settings: Settings, clock: FakeClock
) -> None:
    keys = offline_settings.keys
    redis = FakeRedis(xrange=[])
    sup = supervisor(redis, offline_settings)
    sup.pools = {"p1": (pool := view(PoolStatus.CLOSING))}
    await sup.supervise(pool, None)

    [(_, deleted, _)] = redis.calls("delete")
    assert set(deleted) == {
        keys.pool_tasks("p1"),
        keys.pool_load("p1"),
        keys.pool_workers("p1"),
        keys.pool_inbox("p1"),
    }
    [(_, (key,), kwargs)] = redis.calls("hset")
    assert key == keys.pool("p1") and kwargs["mapping"]["status"] == "closed"
    expired = {args for _, args, _ in redis.calls("expire")}
    assert expired == {
        (keys.pool("p1"), offline_settings.result_ttl),
        (keys.pool_memory("p1"), offline_settings.result_ttl),  # still searchable a while
    }
    assert [args for _, args, _ in redis.calls("srem")] == [(keys.pools, "p1")]
    events = [decode(as_reply(args[1])) for _, args, _ in redis.calls("xadd")]
    assert events == [
        StatusUpdate(pool_id="p1", status=PoolStatus.CLOSED, detail="closed"),
        PoolClosed(pool_id="p1", reason="closed on request"),
    ]
    [(_, (lease_keys, lease_args), _)] = redis.calls("release_lease")
    assert (lease_keys, lease_args) == ([keys.pool_lease("p1")], [OWNER])
    assert sup.pools == {}


def leftover(**task: Any) -> TaskDelegate:
    return TaskDelegate(task=TaskSpec(call="noop", **task), attempt=1)


async def test_a_closed_pools_leftovers_are_rerouted_or_failed_by_how_they_were_sent(
    offline_settings: Settings,
    finalized: list[list[FinalResult]],
    announced: list[list[tuple[str, str]]],
) -> None:
    keys = offline_settings.keys
    routed = leftover()
    direct = leftover(pool_id="p1")
    movable = leftover(pool_id="p1", reroute_on_close=True)
    done = leftover()
    unsaid = leftover(pool_id="p1")
    entries = [
        (b"1-0", as_reply(encode(routed))),
        (b"2-0", as_reply(encode(direct))),
        (b"3-0", as_reply(encode(movable))),
        (b"4-0", as_reply(encode(done))),
        (b"5-0", as_reply(encode(unsaid))),
        (b"6-0", {b"type": b"TASK_DELEGATE", b"task": b"t-bad", b"body": b"\xc1"}),
    ]
    state = {
        keys.pool_task("p1", done.task.id): [b"completed", b"1"],
        keys.pool_task("p1", unsaid.task.id): [b"failed", b"0"],
    }
    redis = FakeRedis(
        xrange=lambda stream, min, max, count: entries if min == "-" else [],
        hmget=lambda key, fields: state.get(key, [None, None]),
    )
    await supervisor(redis, offline_settings)._requeue_leftovers("p1")

    stream = keys.pool_tasks("p1")
    [(_, _, first), (_, _, second)] = redis.calls("xrange")
    assert (first["min"], second["min"]) == ("-", "(6-0")  # page by page, after the last read
    sent = [
        decode(as_reply(args[1])) for _, args, _ in redis.calls("xadd") if args[0] == keys.ingress
    ]
    assert [m.task for m in sent if isinstance(m, TaskDelegate)] == [
        routed.task,
        movable.task.model_copy(update={"pool_id": None}),  # routed like any other now
    ]
    pending = [(k, a) for _, (k, a), _ in redis.calls("set_task_fields")]
    assert pending == [
        ([keys.pool_task("p1", routed.task.id)], ["status", TaskStatus.PENDING]),
        ([keys.pool_task("p1", movable.task.id)], ["status", TaskStatus.PENDING]),
    ]
    [failed] = finalized
    assert [(f.result.task_id, f.result.error) for f in failed] == [
        (direct.task.id, "pool p1 closed before the task ran")
    ]
    assert announced == [[("p1", unsaid.task.id)]]  # recorded but never announced: now it is
    letters = [args[1] for _, args, _ in redis.calls("xadd") if args[0] == keys.dlq]
    assert [r["task"] for r in letters] == ["t-bad"]
    assert (stream, WORKER_GROUP, b"6-0") in [args for _, args, _ in redis.calls("xack")]
    assert (stream, b"1-0", b"2-0", b"3-0", b"4-0", b"5-0", b"6-0") in [
        args for _, args, _ in redis.calls("xdel")
    ]  # every entry handled is removed, so none is handled twice
