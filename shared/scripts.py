"""Lua scripts for the few steps that must be atomic. Each touches the keys of one slot only.

The scripts take stream fields as a flat ARGV list after their own arguments, so the entry they
write is byte-for-byte what `shared.codec.encode` produced.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from shared.connection import Redis

# ARGV[1] = max length; ARGV[2..] = field/value pairs. Returns the entry id, or an error.
XADD_BOUNDED = """
local n = redis.call('XLEN', KEYS[1])
if n >= tonumber(ARGV[1]) then
  return redis.error_reply('QUEUEFULL ' .. KEYS[1] .. ' holds ' .. n .. ' of ' .. ARGV[1])
end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
"""

# KEYS[1] = pool hash, KEYS[2] = pool task stream. ARGV[1] = default max_queue; ARGV[2..] = fields.
# Writes only while the pool accepts work and its backlog is under max_queue.
SUBMIT_TO_POOL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return redis.error_reply('NOPOOL no pool ' .. KEYS[1])
end
if status == 'closing' or status == 'closed' or status == 'failed' then
  return redis.error_reply('POOLDOWN pool is ' .. status)
end
local limit = tonumber(redis.call('HGET', KEYS[1], 'max_queue') or ARGV[1])
local n = redis.call('XLEN', KEYS[2])
if n >= limit then
  return redis.error_reply('QUEUEFULL ' .. KEYS[2] .. ' holds ' .. n .. ' of ' .. limit)
end
return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
"""

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
_FINAL = "status == 'completed' or status == 'failed' or status == 'cancelled' or "
_FINAL += "status == 'dead_lettered'"

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
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[1], 'started_at', ARGV[2],
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
if status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  return status
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancel_requested', '1',
  'finished_at', ARGV[1])
return status
"""


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
