"""The sync watermark: one consumer group per destination on each pool's memory stream.

A destination `D` reads `pool:{P}:memory` through the group `memsync:D`. An entry is delivered
to one consumer (an orchestrator, named by its id) and acknowledged once the service took it, so
nothing is skipped and nothing is sent twice, across restarts and with several orchestrators
sharing the work. Entries stay pending on their consumer while it retries; only the entries of
a consumer whose orchestrator heartbeat is gone are claimed by another one (`CLAIM_DEAD`, one
atomic step, so two live orchestrators never take the same entry). Acknowledging never deletes:
the stream is shared with search and the other destination; it is bounded by `memory_max_len`.

Every script touches one pool's slot: its memory stream and its `memsync` counters hash.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.config import Settings
from shared.connection import Entry, Redis, flatten_read, text
from shared.scripts import check_one_slot

GROUP_PREFIX = "memsync:"

# Creates the group at the stream's start (entries trimmed before it existed count as read),
# and repairs the group's lag after entries were trimmed before it read them: those are lost to
# this destination and counted in `<dest>:lost`. Answers {stream exists 0/1, lost now or -1}.
PREPARE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end
local function map(flat)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end
local s = map(redis.call('XINFO', 'STREAM', KEYS[1]))
local added, length = tonumber(s['entries-added']), tonumber(s['length'])
local group
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local t = map(g)
  if t['name'] == ARGV[1] then group = t end
end
if not group then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'ENTRIESREAD', added - length)
  return {1, 0}
end
local first = s['first-entry']
if not first or length == 0 then return {1, 0} end
local function older(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  return ams < bms or (ams == bms and aseq < bseq)
end
local last = group['last-delivered-id']
if not older(last, first[1]) then return {1, 0} end
local lag = group['lag']
local lost = -1
if lag then lost = tonumber(lag) - length end
if lost ~= 0 then
  redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], last, 'ENTRIESREAD', added - length)
  if lost > 0 then redis.call('HINCRBY', KEYS[2], ARGV[2] .. ':lost', lost) end
end
return {1, lost}
"""

# Moves to ARGV[3] what is still pending on the dead consumer ARGV[2] (at most ARGV[4]); a
# consumer left with nothing is deleted. Atomic: an entry another orchestrator claimed first is
# no longer the dead one's, so it is not taken twice.
CLAIM_DEAD = """
local pend = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[4]), ARGV[2])
local ids = {}
for _, p in ipairs(pend) do ids[#ids + 1] = p[1] end
if #ids == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
  return {}
end
return redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, unpack(ids))
"""

# Acknowledges entries the service took (or that are skipped) and counts them in one step.
# ARGV: group, destination, counter name (synced / skipped / lost), now, ids...
ACK_COUNTED = """
local n = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 5))
if n > 0 then
  redis.call('HINCRBY', KEYS[2], ARGV[2] .. ':' .. ARGV[3], n)
  if ARGV[3] == 'synced' then redis.call('HSET', KEYS[2], ARGV[2] .. ':last_success', ARGV[4]) end
end
return n
"""


def group_name(destination: str) -> str:
    """The consumer group of a destination on every memory stream."""
    return GROUP_PREFIX + destination


async def run_script(redis: Redis, name: str, source: str, keys: list[str], args: list[Any]) -> Any:
    """Run one of this module's scripts (EVAL: small, rarely per second) on one slot."""
    check_one_slot(name, keys)
    return await redis.eval(source, len(keys), *keys, *args)


@dataclass
class Batch:
    """Entries read for one destination from one pool's stream; `again` when they were
    delivered before (this consumer's failed send, or a dead orchestrator's): one of them may
    have reached the service already."""

    entries: list[Entry]
    again: bool = False


class Watermark:
    """The consumer-group operations of one destination, for one consumer (orchestrator)."""

    def __init__(self, redis: Redis, settings: Settings, destination: str, consumer: str) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = settings.keys
        self.destination = destination
        self.group = group_name(destination)
        self.consumer = consumer

    def _keys(self, pool_id: str) -> list[str]:
        return [self.keys.pool_memory(pool_id), self.keys.pool_memory_sync(pool_id)]

    async def prepare(self, pool_id: str) -> tuple[bool, int]:
        """Make sure the group exists; (stream exists, records lost to trimming just now,
        -1 when Redis could not say how many)."""
        exists, lost = await run_script(
            self.redis,
            "memsync_prepare",
            PREPARE,
            self._keys(pool_id),
            [self.group, self.destination],
        )
        return bool(int(exists)), int(lost)

    async def next_batch(self, pool_id: str, count: int) -> Batch:
        """Entries to send, oldest first: this consumer's own pending ones (a failed send being
        retried), else the pending ones of dead orchestrators, else new ones."""
        key = self.keys.pool_memory(pool_id)
        own = flatten_read(
            await self.redis.xreadgroup(self.group, self.consumer, {key: "0"}, count=count)
        )
        if own:
            return Batch([entry for _, entry in own], again=True)
        claimed = await self._claim_dead(pool_id, count)
        if claimed:
            return Batch(claimed, again=True)
        new = flatten_read(
            await self.redis.xreadgroup(self.group, self.consumer, {key: ">"}, count=count)
        )
        return Batch([entry for _, entry in new])

    async def _claim_dead(self, pool_id: str, count: int) -> list[Entry]:
        key = self.keys.pool_memory(pool_id)
        consumers = [
            text({text(k): v for k, v in c.items()}.get("name"))
            for c in await self.redis.xinfo_consumers(key, self.group)
        ]
        # every dead consumer goes: its pending entries to this one, then itself (CLAIM_DEAD)
        others = [c for c in consumers if c != self.consumer]
        if not others:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for name in others:
            pipe.exists(self.keys.orchestrator(name))
        alive = await pipe.execute()
        claimed: list[Entry] = []
        for name, live in zip(others, alive, strict=True):
            if int(live) or len(claimed) >= count:
                continue
            reply = await run_script(
                self.redis,
                "memsync_claim_dead",
                CLAIM_DEAD,
                [key],
                [self.group, name, self.consumer, count - len(claimed)],
            )
            claimed.extend((entry[0], _fields(entry[1])) for entry in reply or [])
        return claimed

    async def ack(self, pool_id: str, ids: Sequence[bytes | str], counter: str = "synced") -> int:
        """Acknowledge `ids` and add them to the pool's `<dest>:<counter>`."""
        if not ids:
            return 0
        args: list[Any] = [self.group, self.destination, counter, repr(time.time()), *ids]
        return int(
            await run_script(self.redis, "memsync_ack", ACK_COUNTED, self._keys(pool_id), args)
        )


def _fields(raw: Any) -> dict[bytes, bytes]:
    """Entry fields from a script reply (a flat list) or a parsed mapping."""
    if isinstance(raw, dict):
        return {k if isinstance(k, bytes) else str(k).encode(): v for k, v in raw.items()}
    flat = list(raw or [])
    return {
        (k if isinstance(k, bytes) else str(k).encode()): (
            v if isinstance(v, bytes) else str(v).encode()
        )
        for k, v in zip(flat[::2], flat[1::2], strict=True)
    }
