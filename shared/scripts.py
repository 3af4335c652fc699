"""Lua scripts for the steps that must be atomic.

Two families. The per-task scripts touch the keys of one slot only, so they run on Redis
Cluster. The batch scripts (`*_BATCH`) do the same work for a whole batch in one call: on a
standalone server (the default, `redis_cluster: false`) a batch of tasks costs one command
instead of several per task. Their ARGV is read with a cursor: counts precede variable-length
parts, and keys are named by their index in KEYS.

The scripts take stream fields as flat ARGV lists, so the entry they write is byte-for-byte what
`shared.codec.encode` produced.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from shared.connection import Redis
from shared.models import ACCEPTING_STATUSES, FINAL_STATUSES, PoolStatus, TaskStatus

# ARGV[1] = max length; ARGV[2..] = field/value pairs. Returns the entry id, or an error.
XADD_BOUNDED = """
local n = redis.call('XLEN', KEYS[1])
if n >= tonumber(ARGV[1]) then
  return redis.error_reply('QUEUEFULL ' .. KEYS[1] .. ' holds ' .. n .. ' of ' .. ARGV[1])
end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
"""

# the pool statuses in which a pool takes no work, as a Lua condition on `status`
_POOL_DOWN = " or ".join(
    f"status == '{status}'" for status in sorted(set(PoolStatus) - ACCEPTING_STATUSES)
)

# Errors unless the pool at KEYS[1] exists and takes work (the start of the submit scripts).
_POOL_TAKES_WORK = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return redis.error_reply('NOPOOL no pool ' .. KEYS[1])
end
if {_POOL_DOWN} then
  return redis.error_reply('POOLDOWN pool is ' .. status)
end
"""

# KEYS[1] = pool hash, KEYS[2] = pool task stream. ARGV[1] = default max_queue; ARGV[2..] = fields.
# Writes only while the pool accepts work and its backlog is under max_queue.
SUBMIT_TO_POOL = (
    _POOL_TAKES_WORK
    + """
local limit = tonumber(redis.call('HGET', KEYS[1], 'max_queue') or ARGV[1])
local n = redis.call('XLEN', KEYS[2])
if n >= limit then
  return redis.error_reply('QUEUEFULL ' .. KEYS[2] .. ' holds ' .. n .. ' of ' .. limit)
end
return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
"""
)

# KEYS[1] = pool hash, KEYS[2] = pool inbox. ARGV[1..] = fields. Writes only while the pool
# exists and its inbox is under the pool's inbox_max.
SEND_TO_INBOX = """
local limit = redis.call('HGET', KEYS[1], 'inbox_max')
if not limit then
  return redis.error_reply('NOPOOL no pool ' .. KEYS[1])
end
local n = redis.call('XLEN', KEYS[2])
if n >= tonumber(limit) then
  return redis.error_reply('INBOXFULL ' .. KEYS[2] .. ' holds ' .. n .. ' of ' .. limit)
end
return redis.call('XADD', KEYS[2], '*', unpack(ARGV))
"""

# KEYS[1] = task hash. ARGV[1] = ttl, ARGV[2] = writer token; ARGV[3..] = field/value pairs.
# Sets the fields unless the task is already final. Returns 1 when written, 0 when final. A
# writer retrying after a lost reply (same token) gets 1 again, so it still announces the result,
# unless its announcement went through (the `announced` mark, set last by `finalize_results`).
_FINAL = " or ".join(f"status == '{status}'" for status in sorted(FINAL_STATUSES))
_RUNNING, _QUEUED = TaskStatus.RUNNING.value, TaskStatus.QUEUED.value
_CANCELLED = TaskStatus.CANCELLED.value

FINALIZE_TASK = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if {_FINAL} then
  if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'final_token') == ARGV[2]
      and redis.call('HGET', KEYS[1], 'announced') ~= '1' then
    return 1
  end
  return 0
end
redis.call('HSET', KEYS[1], 'final_token', ARGV[2], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""

# KEYS[1] = task hash. ARGV: worker, started_at, attempt.
# Marks a task running unless it is final or a cancel was asked. Returns 1 to run, 0 to skip.
START_TASK = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if {_FINAL} then
  return 0
end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  return 2
end
redis.call('HSET', KEYS[1], 'status', '{_RUNNING}', 'worker', ARGV[1], 'started_at', ARGV[2],
  'attempts', ARGV[3])
return 1
"""

# KEYS[1] = task hash. ARGV = field/value pairs. Sets them unless the task is already final (a
# re-queued copy of a finished task must not make it look unfinished). Returns 1 if set.
SET_TASK_FIELDS = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if {_FINAL} then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# KEYS[1] = task hash. ARGV[1] = now. Returns the task's status before the call; a task that was
# not yet running becomes 'cancelled' here, a running one is flagged for its worker to stop.
CANCEL_TASK = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return ''
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

# KEYS[1] = target stream's owner (pool hash; the ingress stream itself for ingress),
# KEYS[2] = target stream, KEYS[3..] = the tasks' hashes.
# ARGV: 'pool' or 'ingress', default limit, task ttl, room needed (this call's tasks, or all of
# a submission split into several calls: the first call checks for all), then per task: hash
# fields (counted), entry fields (counted). All or nothing: if the pool takes no work or the
# tasks do not fit under the limit, nothing is written and the error names why. Returns the
# entry ids.
SUBMIT_BATCH = (
    _CURSOR
    + """
local mode, limit, ttl, need = take(), tonumber(take()), tonumber(take()), tonumber(take())
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
for k = 3, #KEYS do
  local ha, hb = span()
  redis.call('HSET', KEYS[k], unpack(ARGV, ha, hb))
  redis.call('EXPIRE', KEYS[k], ttl)
  local ea, eb = span()
  ids[#ids + 1] = redis.call('XADD', KEYS[2], '*', unpack(ARGV, ea, eb))
end
return ids
"""
)

# KEYS[1] = pool hash, KEYS[2] = pool task stream, KEYS[3] = ingress, KEYS[4..] = the tasks'
# hashes. ARGV: default limit, ingress group, pool id, then per task: its ingress entry id and
# entry fields (counted). Forwards tasks in order while the pool takes work and has room (a task
# that became final meanwhile is not forwarded), records the choice in each task hash, and
# acknowledges and deletes the ingress entries it took. Returns {how many it took, the pool's
# backlog after}.
ROUTE_BATCH = (
    _CURSOR
    + f"""
local default_limit, group, pool = take(), take(), take()
local status = redis.call('HGET', KEYS[1], 'status')
if not status or {_POOL_DOWN} then
  return {{0, redis.call('XLEN', KEYS[2])}}
end
local limit = tonumber(redis.call('HGET', KEYS[1], 'max_queue') or default_limit)
local room = limit - redis.call('XLEN', KEYS[2])
local taken = {{}}
for k = 4, #KEYS do
  if #taken >= room then
    break
  end
  local entry = take()
  local fa, fb = span()
  status = redis.call('HGET', KEYS[k], 'status')
  if not ({_FINAL}) then
    redis.call('HSET', KEYS[k], 'status', '{_QUEUED}', 'pool', pool, 'routed_from', entry)
    redis.call('XADD', KEYS[2], '*', unpack(ARGV, fa, fb))
  end
  taken[#taken + 1] = entry
end
if #taken > 0 then
  redis.call('XACK', KEYS[3], group, unpack(taken))
  redis.call('XDEL', KEYS[3], unpack(taken))
end
return {{#taken, redis.call('XLEN', KEYS[2])}}
"""
)

# KEYS = the tasks' hashes. ARGV: worker, started_at, then each task's attempt.
# START_TASK for a batch: returns per task 1 to run, 0 to skip (final), 2 (a cancel was asked).
START_BATCH = f"""
local out = {{}}
for k = 1, #KEYS do
  local state = redis.call('HMGET', KEYS[k], 'status', 'cancel_requested')
  local status = state[1]
  if {_FINAL} then
    out[k] = 0
  elseif state[2] == '1' then
    out[k] = 2
  else
    redis.call('HSET', KEYS[k], 'status', '{_RUNNING}', 'worker', ARGV[1], 'started_at', ARGV[2],
      'attempts', ARGV[k + 2])
    out[k] = 1
  end
end
return out
"""

# Records a batch of final results and announces the new ones, atomically: FINALIZE_TASK plus
# everything `shared.state.announce` queues, plus inbox shares and the acknowledgement of the
# batch's entries. KEYS[1] = events, KEYS[2] = dead letters, KEYS[3..] = the keys named below.
# ARGV: result ttl, reply ttl, events/memory/dead-letter max lengths, now, count; per result:
#   task hash index, token, task id, pool id, hash fields (counted),
#   reply stream index (0: none), RESULT_SHARE entry fields (counted), event fields (counted),
#   memory stream index (0: none), memory record (counted),
#   load hash index (0: none), completed (0/1), duration ms, failed (0/1),
#   dead-letter record (counted; 0 pairs: none), shares (counted triples: pool hash index,
#   inbox index, pool id);
# then the acknowledgement: stream index (0: none), group, ids (counted, single values).
# Returns {written per result (1 new, 0 already final), dead-letter reasons of failed shares}.
COMPLETE_BATCH = (
    _CURSOR
    + f"""
local ttl, reply_ttl = tonumber(take()), tonumber(take())
local events_max, memory_max, dlq_max = take(), take(), take()
local now, count = take(), tonumber(take())
local written, problems, replies, loads = {{}}, {{}}, {{}}, {{}}
for r = 1, count do
  local task, token, task_id, pool_id = KEYS[tonumber(take())], take(), take(), take()
  local fa, fb = span()
  local reply = tonumber(take())
  local ra, rb = span()
  local ea, eb = span()
  local memory = tonumber(take())
  local ma, mb = span()
  local load, done, ms, failed = tonumber(take()), take(), take(), take()
  local da, db = span()
  local shares = tonumber(take())
  local status = redis.call('HGET', task, 'status')
  if {_FINAL} then
    written[r] = 0
    i = i + 3 * shares
  else
    written[r] = 1
    redis.call('HSET', task, 'final_token', token, 'announced', '1', unpack(ARGV, fa, fb))
    redis.call('EXPIRE', task, ttl)
    if reply > 0 then
      redis.call('XADD', KEYS[reply], '*', unpack(ARGV, ra, rb))
      replies[reply] = true
    end
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', events_max, '*', unpack(ARGV, ea, eb))
    if memory > 0 then
      redis.call('XADD', KEYS[memory], 'MAXLEN', '~', memory_max, '*', unpack(ARGV, ma, mb))
    end
    if load > 0 then
      local l = loads[load] or {{0, 0, 0}}
      l[1] = l[1] + tonumber(done)
      l[2] = l[2] + tonumber(ms)
      l[3] = l[3] + tonumber(failed)
      loads[load] = l
    end
    if db >= da then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', dlq_max, '*', unpack(ARGV, da, db))
    end
    for s = 1, shares do
      local owner, inbox, target = KEYS[tonumber(take())], KEYS[tonumber(take())], take()
      local limit = redis.call('HGET', owner, 'inbox_max')
      local why = nil
      if not limit then
        why = "no pool with id '" .. target .. "'"
      elseif redis.call('XLEN', inbox) >= tonumber(limit) then
        why = "inbox of pool '" .. target .. "' is full; the result was not sent"
      else
        redis.call('XADD', inbox, '*', unpack(ARGV, ra, rb))
      end
      if why then
        why = 'result not shared with pool ' .. target .. ': ' .. why
        problems[#problems + 1] = task_id .. ': ' .. why
        redis.call('XADD', KEYS[2], 'MAXLEN', '~', dlq_max, '*', 'task', task_id,
          'pool', pool_id, 'reason', why, 'attempts', '0', 'at', now)
      end
    end
  end
end
for k, _ in pairs(replies) do
  redis.call('EXPIRE', KEYS[k], reply_ttl)
end
for k, l in pairs(loads) do
  if l[1] > 0 then
    redis.call('HINCRBY', KEYS[k], 'completed', l[1])
    redis.call('HINCRBYFLOAT', KEYS[k], 'total_ms', l[2])
  end
  if l[3] > 0 then
    redis.call('HINCRBY', KEYS[k], 'failed', l[3])
  end
end
local stream, group = tonumber(take()), take()
local acks = tonumber(take())
if stream > 0 and acks > 0 then
  redis.call('XACK', KEYS[stream], group, unpack(ARGV, i, i + acks - 1))
  redis.call('XDEL', KEYS[stream], unpack(ARGV, i, i + acks - 1))
end
return {{written, problems}}
"""
)


class Scripts:
    """The scripts of one client. Direct calls (`await scripts.cancel_task(keys=..., args=...)`)
    load a script on first use; in a pipeline, `queue` adds a plain EVALSHA and `execute` runs
    the pipeline, loading the scripts first (redis-py's own pipeline support would send a
    SCRIPT EXISTS round trip before every pipeline)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._loaded = False
        self.xadd_bounded: AsyncScript = redis.register_script(XADD_BOUNDED)
        self.submit_to_pool: AsyncScript = redis.register_script(SUBMIT_TO_POOL)
        self.finalize_task: AsyncScript = redis.register_script(FINALIZE_TASK)
        self.start_task: AsyncScript = redis.register_script(START_TASK)
        self.set_task_fields: AsyncScript = redis.register_script(SET_TASK_FIELDS)
        self.cancel_task: AsyncScript = redis.register_script(CANCEL_TASK)
        self.send_to_inbox: AsyncScript = redis.register_script(SEND_TO_INBOX)
        self.set_pool_status: AsyncScript = redis.register_script(SET_POOL_STATUS)
        self.acquire_lease: AsyncScript = redis.register_script(ACQUIRE_LEASE)
        self.release_lease: AsyncScript = redis.register_script(RELEASE_LEASE)
        self.submit_batch: AsyncScript = redis.register_script(SUBMIT_BATCH)
        self.start_batch: AsyncScript = redis.register_script(START_BATCH)
        self.route_batch: AsyncScript = redis.register_script(ROUTE_BATCH)
        self.complete_batch: AsyncScript = redis.register_script(COMPLETE_BATCH)
        self._all = [
            self.xadd_bounded,
            self.submit_to_pool,
            self.finalize_task,
            self.start_task,
            self.set_task_fields,
            self.cancel_task,
            self.send_to_inbox,
            self.set_pool_status,
            self.acquire_lease,
            self.release_lease,
            self.submit_batch,
            self.start_batch,
            self.route_batch,
            self.complete_batch,
        ]

    def queue(self, pipe: Any, script: AsyncScript, keys: list[str], args: list[Any]) -> None:
        """Queue an EVALSHA of `script` on a pipeline that `execute` will run."""
        pipe.evalsha(script.sha, len(keys), *keys, *args)

    def set_task(self, pipe: Any, task_key: str, **fields: str) -> None:
        """Queue a write of task-hash fields that leaves a final task untouched."""
        self.queue(pipe, self.set_task_fields, [task_key], flat_fields(fields))

    async def load(self) -> None:
        """Load every script into the server's cache (once per client, again after a restart)."""
        if not self._loaded:
            pipe = self._redis.pipeline(transaction=False)
            for script in self._all:
                pipe.script_load(script.script)
            await pipe.execute()
            self._loaded = True

    async def execute(self, pipe: Any, *, raise_on_error: bool = True) -> list[Any]:
        """Run a pipeline holding queued scripts.

        If the server lost its script cache (a restart, SCRIPT FLUSH), no script ran: the
        scripts are loaded again and the pipeline re-sent (its other commands must be safe to
        repeat, which ours are).
        """
        await self.load()
        stack = list(pipe.command_stack)
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
        pipe.command_stack = stack
        result: list[Any] = await pipe.execute(raise_on_error=raise_on_error)
        return result
