"""The Lua scripts for the steps that must be atomic: one library, one code path.

Every script touches the keys of one Redis Cluster slot, on a standalone server as on a
cluster (`Scripts.queue` and `Scripts.run` refuse a call whose keys have two hash tags). A
task's state lives in the slot of the pool it is queued on (`Keys.pool_task`), so what a worker
does to a batch (start it, record its results, acknowledge its entries) is one call in its
pool's slot; effects on other slots (replies, events, dead letters, another pool's inbox) are
follow-up steps in `shared/finals.py`, guarded so that a crash between steps is repaired.

Batch scripts take one argument per task (or entry): a msgpack array packed by `packed_task` or
`packed_result` that Lua's `cmsgpack` unpacks, its field maps as flat lists of strings, so an
entry is byte-for-byte what `shared.codec` produced (one argument instead of ~25-45 costs less
to send and to hand to Lua); the few head values before them are read in order, some with a
cursor (`take()`, `span()`), keys are named by their index in KEYS.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
from redis.asyncio.client import CommandStackT
from redis.asyncio.cluster import ClusterPipeline, PipelineStrategy, RedisCluster
from redis.exceptions import NoScriptError

from shared.connection import Pipeline, Redis
from shared.keys import hash_tag
from shared.models import ACCEPTING_STATUSES, FINAL_STATUSES, PoolStatus, TaskStatus
from shared.replies import Queued

# the pool statuses in which a pool takes no work, as a Lua condition on `status`
_POOL_DOWN = " or ".join(
    f"status == '{status}'" for status in sorted(set(PoolStatus) - ACCEPTING_STATUSES)
)
# the final task statuses, as a Lua condition on `status`
_FINAL = " or ".join(f"status == '{status}'" for status in sorted(FINAL_STATUSES))
_RUNNING, _QUEUED = TaskStatus.RUNNING.value, TaskStatus.QUEUED.value
_CANCELLED = TaskStatus.CANCELLED.value

# The cursor every batch script reads its ARGV with: `take()` the next value, `span()` a counted
# list of pairs (its first and last ARGV index, for `unpack(ARGV, a, b)`).
_CURSOR = """
local i = 1
local function take()
  local v = ARGV[i]
  i = i + 1
  return v
end
local function span()
  local n = tonumber(ARGV[i]) * 2
  local a = i + 1
  i = a + n
  return a, a + n - 1
end
"""

# Errors unless the pool at KEYS[1] exists and takes work.
_POOL_TAKES_WORK = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return redis.error_reply('NOPOOL no pool ' .. KEYS[1])
end
if {_POOL_DOWN} then
  return redis.error_reply('POOLDOWN pool is ' .. status)
end
"""

# KEYS = tasks' `task` hashes (the look-ups, in the ingress slot). ARGV: ttl, count, then per
# task its fields (counted). Writes each hash and its TTL.
INIT_BATCH = (
    _CURSOR
    + """
local ttl, count = tonumber(take()), tonumber(take())
for k = 1, count do
  local a, b = span()
  redis.call('HSET', KEYS[k], unpack(ARGV, a, b))
  redis.call('EXPIRE', KEYS[k], ttl)
end
return count
"""
)

# KEYS[1] = target stream's owner (pool hash; the ingress stream itself for ingress),
# KEYS[2] = target stream, KEYS[3..] = the tasks' state hashes (`pool_task` for a pool, the
# `task` look-ups for the ingress: the same slot either way).
# ARGV: 'pool' or 'ingress', default limit, task ttl, room needed (this call's tasks, or all of
# a submission split into several calls: the first call checks for all), count, then one
# argument per task packed by `packed_task` ('', hash fields, entry fields). All or nothing: if
# the pool takes no work or the tasks do not fit under the limit, nothing is written and the
# error names why. Returns the entry ids.
SUBMIT_BATCH = (
    """
local mode, limit, ttl, need = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local count = tonumber(ARGV[5])
if mode == 'pool' then
"""
    + _POOL_TAKES_WORK
    + """
  limit = tonumber(redis.call('HGET', KEYS[1], 'max_queue') or limit)
end
local n = redis.call('XLEN', KEYS[2])
if n + need > limit then
  return redis.error_reply('QUEUEFULL ' .. KEYS[2] .. ' holds ' .. n .. ' of ' .. limit
    .. '; a batch of ' .. need .. ' does not fit')
end
local ids = {}
for k = 1, count do
  local one = cmsgpack.unpack(ARGV[k + 5])
  if #one[2] > 0 then
    redis.call('HSET', KEYS[k + 2], unpack(one[2]))
    redis.call('EXPIRE', KEYS[k + 2], ttl)
  end
  ids[k] = redis.call('XADD', KEYS[2], '*', unpack(one[3]))
end
return ids
"""
)

# KEYS = the tasks' `task` hashes (in the ingress slot). ARGV: ttl, then per task: its ingress
# entry id, the chosen pool, force ('1': the pool the entry was claimed for refused it, so it
# may go elsewhere). Decides where each ingress entry goes, once per entry: the first call
# records the pool (`home`, `routed_from`); a repeated call for the same entry (an orchestrator
# died after choosing) returns the pool chosen then. Returns per task {'to', pool},
# {'cancelled', home} when a cancel was asked, or {'final', announced} for a task that became
# final while it had no pool.
CLAIM_ROUTE = (
    _CURSOR
    + f"""
local ttl = tonumber(take())
local out = {{}}
for k = 1, #KEYS do
  local entry, pool, force = take(), take(), take()
  local state = redis.call('HMGET', KEYS[k], 'status', 'home', 'routed_from',
    'cancel_requested', 'announced')
  local status, home, from = state[1], state[2] or '', state[3]
  if state[4] == '1' then
    out[k] = {{'cancelled', home}}
  elseif home == '' and status and ({_FINAL}) then
    out[k] = {{'final', state[5] or ''}}
  elseif from == entry and home ~= '' and force ~= '1' then
    out[k] = {{'to', home}}
  else
    redis.call('HSET', KEYS[k], 'home', pool, 'routed_from', entry)
    if not status then
      redis.call('EXPIRE', KEYS[k], ttl)
    end
    out[k] = {{'to', pool}}
  end
end
return out
"""
)

# KEYS[1] = pool hash, KEYS[2] = pool task stream, KEYS[3..] = the tasks' `pool_task` hashes.
# ARGV: default limit, ttl, count, then per task one argument packed by `packed_task`: its
# ingress entry id, hash fields, entry fields. Moves routed tasks into the pool while it takes
# work and has room: writes each task's state in the pool's slot and its entry on the pool's
# stream, once per ingress entry (a task whose state names this entry is already here). Keeps a
# `cancel_requested` the client left on a state written before the move finished. Returns
# {per task 1 taken, 2 already here, 0 refused; the pool's backlog after}.
FORWARD = f"""
local default_limit, ttl, count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local status = redis.call('HGET', KEYS[1], 'status')
local down = (not status) or {_POOL_DOWN}
local limit = tonumber(redis.call('HGET', KEYS[1], 'max_queue') or default_limit)
local n = redis.call('XLEN', KEYS[2])
local out = {{}}
for k = 1, count do
  local one = cmsgpack.unpack(ARGV[k + 3])
  local entry, fields, body = one[1], one[2], one[3]
  local copy = KEYS[k + 2]
  local state = redis.call('HMGET', copy, 'routed_from', 'cancel_requested')
  if state[1] == entry then
    out[k] = 2
  elseif down or n >= limit then
    out[k] = 0
  else
    redis.call('DEL', copy)
    redis.call('HSET', copy, 'routed_from', entry, unpack(fields))
    if state[2] then
      redis.call('HSET', copy, 'cancel_requested', state[2])
    end
    redis.call('EXPIRE', copy, ttl)
    redis.call('XADD', KEYS[2], '*', unpack(body))
    n = n + 1
    out[k] = 1
  end
end
return {{out, n}}
"""


def packed_task(
    head: str | bytes | int, fields: Mapping[Any, Any], entry: Mapping[Any, Any]
) -> bytes:
    """One task's (or entry's) argument of SUBMIT_BATCH, FORWARD and XADD_MANY (`head`: '';
    its ingress entry id; the index of its writer's marker): a msgpack array of the head, the
    state's fields and the stream entry's fields as flat lists. Old-spec msgpack
    (`use_bin_type=False`): Redis's Lua `cmsgpack` reads no bin types."""
    return msgpack.packb(  # type: ignore[no-any-return]
        [head, _flat_text(fields), _flat_text(entry)], use_bin_type=False
    )


def _flat_text(fields: Mapping[Any, Any]) -> list[str | bytes]:
    """A field map as a flat list of strings and bytes: a number packed as such would reach
    Redis through a Lua number, which Redis formats its own way (0.1 as 0.10000000000000001)."""
    out: list[str | bytes] = []
    for key, value in fields.items():
        out.append(key if isinstance(key, str | bytes) else str(key))
        out.append(value if isinstance(value, str | bytes) else str(value))
    return out


START_RUN, START_SKIP, START_CANCELLED, START_ANNOUNCE = 1, 0, 2, 3
"""What START_BATCH answers per task: run it; skip it (final, announced); record it cancelled
(a cancel was asked); announce its stored result (final, but its writer died before announcing
it), then acknowledge the entry."""

# KEYS = the tasks' `pool_task` hashes. ARGV: worker, started_at, then each task's attempt, then
# (optional) started_at in ISO 8601 for `started`. Marks tasks running unless final or a cancel
# was asked; see START_RUN and the rest for what it answers per task.
START_BATCH = f"""
local out = {{}}
local iso = ARGV[#KEYS + 3]
for k = 1, #KEYS do
  local state = redis.call('HMGET', KEYS[k], 'status', 'cancel_requested', 'announced')
  local status = state[1]
  if {_FINAL} then
    out[k] = state[3] == '1' and {START_SKIP} or {START_ANNOUNCE}
  elseif state[2] == '1' then
    out[k] = {START_CANCELLED}
  else
    if iso then
      redis.call('HSET', KEYS[k], 'status', '{_RUNNING}', 'worker', ARGV[1], 'started_at', ARGV[2],
        'attempts', ARGV[k + 2], 'started', iso)
    else
      redis.call('HSET', KEYS[k], 'status', '{_RUNNING}', 'worker', ARGV[1], 'started_at', ARGV[2],
        'attempts', ARGV[k + 2])
    end
    out[k] = {START_RUN}
  end
end
return out
"""

FINAL_NEW, FINAL_DONE, FINAL_STORED = 1, 0, 2
"""What COMPLETE_BATCH answers per result: recorded now (announce it); already final and
announced (nothing to do); already final with another writer's result that was never announced
(announce the stored result)."""

# Records final results in one slot: the tasks' state hashes, and for results of the pool that
# owns the slot its memory record and counters. KEYS = the state hashes, then the memory stream
# and load hash (when the slot is a pool's). ARGV: result ttl, memory max length, memory index
# (0: none), load index (0: none), count, the batch token the results are announced under
# (`announce_token`: set with each result, and again when its writer retries, since a retry's
# batch may differ); then one argument per result, packed by
# `packed_result` (a msgpack array: state index, token, hash fields as a flat list, memory
# record as a flat list (empty: none), completed (0/1), duration ms, failed (0/1)) — one
# argument instead of ~45 costs less to send and to hand to Lua.
# A state written now gets `announced` 0; `finals` sets it to 1 once the result is announced.
# A writer retrying after a lost reply (same token) gets FINAL_NEW again, unless it was
# announced. Returns per result FINAL_NEW, FINAL_DONE or FINAL_STORED.
COMPLETE_BATCH = (
    _CURSOR
    + f"""
local ttl, memory_max = tonumber(take()), take()
local memory, load, count = tonumber(take()), tonumber(take()), tonumber(take())
local batch = take()
local out = {{}}
local done_n, total_ms, failed_n = 0, 0, 0
for r = 1, count do
  local one = cmsgpack.unpack(take())
  local task, token, fields, record = KEYS[one[1]], one[2], one[3], one[4]
  local state = redis.call('HMGET', task, 'status', 'announced', 'final_token')
  local status = state[1]
  if {_FINAL} then
    if state[2] == '1' then
      out[r] = {FINAL_DONE}
    elseif token ~= '' and state[3] == token then
      redis.call('HSET', task, 'announce_token', batch)
      out[r] = {FINAL_NEW}
    else
      out[r] = {FINAL_STORED}
    end
  else
    redis.call('HSET', task, 'final_token', token, 'announce_token', batch, 'announced', '0',
      unpack(fields))
    redis.call('EXPIRE', task, ttl)
    if memory > 0 and #record > 0 then
      redis.call('XADD', KEYS[memory], 'MAXLEN', '~', memory_max, '*', unpack(record))
    end
    done_n, total_ms, failed_n = done_n + one[5], total_ms + one[6], failed_n + one[7]
    out[r] = {FINAL_NEW}
  end
end
if load > 0 and done_n > 0 then
  redis.call('HINCRBY', KEYS[load], 'completed', done_n)
  redis.call('HINCRBYFLOAT', KEYS[load], 'total_ms', tostring(total_ms))
end
if load > 0 and failed_n > 0 then
  redis.call('HINCRBY', KEYS[load], 'failed', failed_n)
end
return out
"""
)


def packed_result(
    index: int,
    token: str,
    fields: Mapping[str, str | bytes],
    record: Mapping[str, str] | None = None,
    counts: tuple[int, float, int] = (0, 0.0, 0),
) -> bytes:
    """One result's argument of COMPLETE_BATCH: its state's index in KEYS, the writer's token,
    the state's fields, its memory record and what it adds to the pool's counters (completed,
    milliseconds, failed). Old-spec msgpack (`use_bin_type=False`): Redis's Lua `cmsgpack`
    reads no bin types."""
    done, ms, failed = counts
    return msgpack.packb(  # type: ignore[no-any-return]
        [index, token, _flat_text(fields), _flat_text(record or {}), done, ms, failed],
        use_bin_type=False,
    )


# KEYS = the stream whose entries are acknowledged (when ARGV[1] is '1'), then state hashes of
# the same slot. ARGV: '1' or '0', group, count of entry ids, the ids. Marks the results
# announced (the last step of `finals`) and acknowledges and deletes the entries.
ACK_ANNOUNCED = """
local first = 1
if ARGV[1] == '1' then
  first = 2
end
for k = first, #KEYS do
  redis.call('HSET', KEYS[k], 'announced', '1')
end
local n = tonumber(ARGV[3])
if first == 2 and n > 0 then
  redis.call('XACK', KEYS[1], ARGV[2], unpack(ARGV, 4, n + 3))
  redis.call('XDEL', KEYS[1], unpack(ARGV, 4, n + 3))
end
return n
"""

# KEYS[1] = stream, KEYS[2] = its sent marker for this batch (`Keys.sent_marker`), KEYS[3..] =
# the markers other writers added stored results under. ARGV: max length ('' for none), the
# stream's ttl in seconds ('' for none), the marker's ttl, count, then one argument per entry
# packed by `packed_task`: the index in KEYS of its writer's marker (0: none), no state fields,
# its fields. Adds the entries in order, once per marker: a writer retrying after a lost reply
# adds nothing the second time, and an entry whose writer's marker exists (it was added before
# that writer died) is skipped. Returns how many it added.
XADD_MANY = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
local maxlen, ttl, marker_ttl, count = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local added = 0
for k = 1, count do
  local one = cmsgpack.unpack(ARGV[k + 4])
  local origin = one[1]
  if origin == 0 or redis.call('EXISTS', KEYS[origin]) == 0 then
    if maxlen ~= '' then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(one[3]))
    else
      redis.call('XADD', KEYS[1], '*', unpack(one[3]))
    end
    added = added + 1
  end
end
if ttl ~= '' and added > 0 then
  redis.call('EXPIRE', KEYS[1], tonumber(ttl))
end
redis.call('SET', KEYS[2], '1', 'EX', tonumber(marker_ttl))
return added
"""

# KEYS[1] = pool hash, KEYS[2] = pool inbox, KEYS[3] (optional) = a sent marker. ARGV[1] = the
# marker's ttl ('' without one), ARGV[2..] = fields. Writes only while the pool exists and its
# inbox is under the pool's inbox_max, and once per marker. Returns the entry id ('' when the
# marker says it was sent before).
SEND_TO_INBOX = """
if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1 then
  return ''
end
local limit = redis.call('HGET', KEYS[1], 'inbox_max')
if not limit then
  return redis.error_reply('NOPOOL no pool ' .. KEYS[1])
end
local n = redis.call('XLEN', KEYS[2])
if n >= tonumber(limit) then
  return redis.error_reply('INBOXFULL ' .. KEYS[2] .. ' holds ' .. n .. ' of ' .. limit)
end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
if KEYS[3] then
  redis.call('SET', KEYS[3], '1', 'EX', tonumber(ARGV[1]))
end
return id
"""

# KEYS[1] = a state hash. ARGV = field/value pairs. Sets them unless the task is already final (a
# re-queued copy of a finished task must not make it look unfinished). Returns 1 if set.
SET_TASK_FIELDS = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if {_FINAL} then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# KEYS[1] = the task's `task` hash. Flags it `cancel_requested` (so a routing of the task that
# is under way drops it) and returns where its state lives ('' in this hash), or false for an
# unknown task.
MARK_CANCEL = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
redis.call('HSET', KEYS[1], 'cancel_requested', '1')
return redis.call('HGET', KEYS[1], 'home') or ''
"""

# KEYS[1] = the task's state hash. ARGV[1] = now, ARGV[2] = ttl, ARGV[3] (optional) = now in
# ISO 8601. Returns the task's status
# before the call; a task that was not yet running becomes 'cancelled' here, a running one is
# flagged for its worker to stop. A state not written yet (the task is being moved into its
# pool) is created with the flag, which the move keeps: 'moving' is returned.
CANCEL_TASK = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 'moving'
end
if {_FINAL} then
  return status
end
if status == '{_RUNNING}' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  return status
end
redis.call('HSET', KEYS[1], 'status', '{_CANCELLED}', 'cancel_requested', '1',
  'finished_at', ARGV[1])
if ARGV[3] then
  redis.call('HSET', KEYS[1], 'finished', ARGV[3])
end
return status
"""


def add_counted(args: list[Any], fields: Mapping[Any, Any]) -> None:
    """Append a field map to a batch script's ARGV as the cursor reads it: count, then pairs."""
    args.append(len(fields))
    for key, value in fields.items():
        args.append(key)
        args.append(value)


def flat_fields(fields: Mapping[Any, Any]) -> list[Any]:
    """A field map as the flat [k1, v1, k2, v2, ...] list that Lua's HSET/XADD take."""
    out: list[Any] = []
    for key, value in fields.items():
        out.append(key)
        out.append(value)
    return out


# KEYS[1] = pool hash. ARGV[1] = the statuses it may have now, comma-separated; ARGV[2..] =
# fields. Writes only if the pool's status is one of them (so a stale view cannot overwrite a
# newer status, e.g. turn a `closing` pool back to `running`). Returns 1 if written.
SET_POOL_STATUS = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or not string.find(',' .. ARGV[1] .. ',', ',' .. status .. ',', 1, true) then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""

# KEYS[1] = lease key. ARGV[1] = holder id, ARGV[2] = ttl in ms. Takes a free lease or renews
# one we hold. Returns 1 if we hold it afterwards, 0 if someone else does.
ACQUIRE_LEASE = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
end
return 0
"""

# KEYS[1] = lease key. ARGV[1] = holder id. Deletes the lease only if we hold it.
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class CrossSlotCall(ValueError):
    """A script was called with keys of two Redis Cluster slots: a bug in the caller, refused
    before anything is sent (Redis Cluster would refuse it with CROSSSLOT)."""


def check_one_slot(name: str, keys: Sequence[str]) -> None:
    """Raise CrossSlotCall unless every key hashes on the same tag."""
    if len(keys) < 2:
        return
    first = keys[0]
    tag = hash_tag(first)
    if tag == first:  # untagged: only the same key again shares its slot
        for key in keys:
            if key != first and hash_tag(key) != tag:
                _cross_slot(name, first, key)
        return
    braced = "{" + tag + "}"
    for key in keys:
        # a key of ours has its tag at its first brace (the prefix holds none)
        if not key.startswith(braced, key.find("{")) and hash_tag(key) != tag:
            _cross_slot(name, first, key)


def _cross_slot(name: str, first: str, key: str) -> None:
    raise CrossSlotCall(f"script {name} called with keys of two slots: {first!r}, {key!r}")


@dataclass(frozen=True)
class Script:
    """One script of the library: its name (for errors), source and SHA1."""

    name: str
    source: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()


LIBRARY: dict[str, str] = {
    "init_batch": INIT_BATCH,
    "submit_batch": SUBMIT_BATCH,
    "claim_route": CLAIM_ROUTE,
    "forward": FORWARD,
    "start_batch": START_BATCH,
    "complete_batch": COMPLETE_BATCH,
    "ack_announced": ACK_ANNOUNCED,
    "xadd_many": XADD_MANY,
    "send_to_inbox": SEND_TO_INBOX,
    "set_task_fields": SET_TASK_FIELDS,
    "mark_cancel": MARK_CANCEL,
    "cancel_task": CANCEL_TASK,
    "set_pool_status": SET_POOL_STATUS,
    "acquire_lease": ACQUIRE_LEASE,
    "release_lease": RELEASE_LEASE,
}


class _Bound:
    """A script bound to a client: `await scripts.cancel_task(keys=[...], args=[...])`."""

    def __init__(self, owner: Scripts, script: Script) -> None:
        self._owner = owner
        self.script = script

    async def __call__(self, keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
        return await self._owner.run(self.script, keys, args)


class Scripts:
    """The script library for one client. `queue` adds an EVALSHA to a pipeline that `execute`
    runs; `run` (or calling a script attribute) runs one at once. Both load the library on
    first use, on every primary of a cluster, and again after a server lost its script cache.
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._loaded = False
        self.library = {name: Script(name, source) for name, source in LIBRARY.items()}
        lib = self.library
        self.init_batch = _Bound(self, lib["init_batch"])
        self.submit_batch = _Bound(self, lib["submit_batch"])
        self.claim_route = _Bound(self, lib["claim_route"])
        self.forward = _Bound(self, lib["forward"])
        self.start_batch = _Bound(self, lib["start_batch"])
        self.complete_batch = _Bound(self, lib["complete_batch"])
        self.ack_announced = _Bound(self, lib["ack_announced"])
        self.xadd_many = _Bound(self, lib["xadd_many"])
        self.send_to_inbox = _Bound(self, lib["send_to_inbox"])
        self.set_task_fields = _Bound(self, lib["set_task_fields"])
        self.mark_cancel = _Bound(self, lib["mark_cancel"])
        self.cancel_task = _Bound(self, lib["cancel_task"])
        self.set_pool_status = _Bound(self, lib["set_pool_status"])
        self.acquire_lease = _Bound(self, lib["acquire_lease"])
        self.release_lease = _Bound(self, lib["release_lease"])

    def queue(
        self, pipe: Pipeline, script: _Bound | Script, keys: Sequence[str], args: Sequence[Any]
    ) -> Queued[object]:
        """Queue an EVALSHA of `script` on a pipeline that `execute` will run; its reply is
        whatever the script returns."""
        found = script.script if isinstance(script, _Bound) else script
        check_one_slot(found.name, keys)
        # execute_command, not pipe.evalsha: a cluster pipeline refuses the latter
        pipe.execute_command("EVALSHA", found.sha, len(keys), *keys, *args)
        return Queued(len(pipe) - 1)

    def set_task(self, pipe: Pipeline, state_key: str, **fields: str) -> None:
        """Queue a write of task-state fields that leaves a final task untouched."""
        self.queue(pipe, self.set_task_fields, [state_key], flat_fields(fields))

    async def load(self) -> None:
        """Load the library into the server's script cache (every primary's, on a cluster)."""
        if self._loaded:
            return
        if isinstance(self._redis, RedisCluster):
            for script in self.library.values():
                await self._redis.script_load(script.source)
        else:
            pipe = self._redis.pipeline(transaction=False)
            for script in self.library.values():
                pipe.script_load(script.source)
            await pipe.execute()
        self._loaded = True

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
        """Run one script now."""
        check_one_slot(script.name, keys)
        await self.load()
        try:
            return await self._redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            self._loaded = False
            await self.load()
            return await self._redis.evalsha(script.sha, len(keys), *keys, *args)

    async def execute(self, pipe: Pipeline, *, raise_on_error: bool = True) -> list[Any]:
        """Run a pipeline holding queued scripts.

        If the server lost its script cache (a restart, SCRIPT FLUSH, a failover), no script
        ran there: the library is loaded again and the pipeline re-sent (its other commands
        must be safe to repeat, which ours are).
        """
        await self.load()
        stack = _queued(pipe)
        try:
            replies: list[Any] = await pipe.execute(raise_on_error=raise_on_error)
        except NoScriptError:
            replies = []
        if replies and not any(isinstance(r, NoScriptError) for r in replies):
            return replies
        if not stack:
            return replies
        self._loaded = False
        await self.load()
        _requeue(pipe, stack)
        result: list[Any] = await pipe.execute(raise_on_error=raise_on_error)
        return result


def _queued(pipe: Pipeline) -> CommandStackT:
    """The commands queued on a pipeline (a standalone or a cluster one)."""
    if isinstance(pipe, ClusterPipeline):
        strategy = pipe._execution_strategy
        if not isinstance(strategy, PipelineStrategy):
            raise TypeError(f"scripts run on non-transactional pipelines, not {strategy!r}")
        return [(cmd.args, cmd.kwargs) for cmd in strategy._command_queue]
    return list(pipe.command_stack)


def _requeue(pipe: Pipeline, stack: CommandStackT) -> None:
    """Queue `_queued`'s commands again on the (reset) pipeline."""
    if isinstance(pipe, ClusterPipeline):
        for args, kwargs in stack:
            pipe.execute_command(*args, **kwargs)
    else:
        pipe.command_stack = stack
