"""Schedules of the Redis queue (:class:`nuvom.redis.RedisJobQueue`).

Keys (under the queue's prefix; the layout is in docs/redis.md)::

    <prefix>:s:k:<key>      hash: payload (the schedule, msgpack), paused,
                            next, next_ms, last, last_job (its progress)
    <prefix>:s:all          sorted set of every key (score 0: key order)
    <prefix>:s:next         sorted set of the keys not paused, by next_run_at
    <prefix>:s:ticks:<key>  sorted set of the ticks claimed in the last day (ms)

A tick is claimed by one Lua script (``CLAIM_TICK`` below) that checks the
schedule, adds the tick to its tick set, queues the tick's job and moves
``next_run_at`` on. Redis runs a script alone and writes its effects to the
append-only file as one transaction, so of several workers exactly one wins a
tick, and neither a killed worker nor a restarted server can leave a tick
claimed without its job: there is nothing to repair.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

from nuvom import serialization
from nuvom.job import Job
from nuvom.plugins.contracts import BaseScheduleStore
from nuvom.redis._lua import BASE, PLACE_NEW, PLACING, extras_of
from nuvom.schedule import Schedule, tick_ms

if TYPE_CHECKING:
    from nuvom.redis._connection import Connection

__all__ = ["RedisSchedules"]

# Claimed ticks older than this are dropped from the tick sets (the next_run_at
# check refuses them anyway); the set guards against an upsert that wrote an
# older next_run_at back after a claim.
_KEEP_TICKS_MS = 86_400_000

_FIELDS = ("payload", "paused", "next", "last", "last_job")


def _num(value: float | None) -> str:
    return "" if value is None else repr(value)


def _decoded(keys: Any) -> list[str]:
    return [k.decode() for k in keys]


def _from_fields(key: str, fields: list[Any]) -> Schedule | None:
    payload, paused, nxt, last, last_job = fields
    if payload is None:
        return None
    s = Schedule.model_validate(serialization.loads(payload, what=f"schedule {key}"))
    s.paused = paused == b"1"
    s.next_run_at = float(nxt) if nxt else None
    s.last_run_at = float(last) if last else None
    s.last_job_id = last_job.decode() if last_job else None
    return s


# -- the scripts ------------------------------------------------------------------
# <prefix>:s:k:<key> is a hash (payload, paused, next, next_ms, last, last_job);
# <prefix>:s:all lists the keys (scores 0: ZRANGE gives them in key order);
# <prefix>:s:next scores the keys of schedules not paused by next_run_at;
# <prefix>:s:ticks:<key> holds the claimed ticks (ms) of the last day.
_SCHEDULES = """
local SALL, SNEXT = P .. ':s:all', P .. ':s:next'
local function skey(key) return P .. ':s:k:' .. key end

-- Keeps :s:next in step with a schedule's hash.
local function index_next(key, paused, nxt)
  if paused == '1' or nxt == '' then
    redis.call('ZREM', SNEXT, key)
  else
    redis.call('ZADD', SNEXT, tonumber(nxt), key)
  end
end
"""

# ARGV: prefix, key, payload, paused ('0'/'1'), next ('' for none), next_ms, last, last_job.
UPSERT_SCHEDULE = (
    BASE
    + _SCHEDULES
    + """
local key = ARGV[2]
redis.call('HSET', skey(key), 'payload', ARGV[3], 'paused', ARGV[4], 'next', ARGV[5], 'next_ms', ARGV[6],
  'last', ARGV[7], 'last_job', ARGV[8])
redis.call('ZADD', SALL, 0, key)
index_next(key, ARGV[4], ARGV[5])
return 1
"""
)

# ARGV: prefix, key, paused ('0'/'1'). Returns 0 for an unknown key.
PAUSE_SCHEDULE = (
    BASE
    + _SCHEDULES
    + """
local key = ARGV[2]
local nxt = redis.call('HGET', skey(key), 'next')
if not nxt then return 0 end
redis.call('HSET', skey(key), 'paused', ARGV[3])
index_next(key, ARGV[3], nxt)
return 1
"""
)

# ARGV: prefix, key. Returns 0 for an unknown key. The schedule's queued jobs stay.
DELETE_SCHEDULE = (
    BASE
    + _SCHEDULES
    + """
local key = ARGV[2]
redis.call('ZREM', SNEXT, key)
redis.call('ZREM', SALL, key)
redis.call('DEL', P .. ':s:ticks:' .. key)
return redis.call('DEL', skey(key))
"""
)

# ARGV: prefix, key, tick ms, tick, next ('' for none), next ms ('' for none),
# ms of claimed ticks to keep, then the job: id ('' for a skipped tick), offset,
# payload, timeout_secs, attempts, extras (as ENQUEUE's). Returns 1 when this call claimed the tick.
#
# Claiming the tick, queueing its job and moving the schedule on are one script:
# of racing workers exactly one wins, and no crash leaves one without the others.
# The tick set (not only next_ms) refuses a tick claimed before: an upsert that
# read the schedule before a claim may write an older next_run_at back.
CLAIM_TICK = (
    BASE
    + PLACING
    + PLACE_NEW
    + _SCHEDULES
    + """
local key, ms = ARGV[2], tonumber(ARGV[3])
local S = skey(key)
local state = redis.call('HMGET', S, 'paused', 'next_ms')
if not state[1] or state[1] == '1' or not state[2] or state[2] == '' or ms < tonumber(state[2]) then
  return 0
end
local ticks = P .. ':s:ticks:' .. key
if redis.call('ZADD', ticks, 'NX', ms, ARGV[3]) == 0 then
  return 0
end
redis.call('ZREMRANGEBYSCORE', ticks, '-inf', ms - tonumber(ARGV[7]))
local id = ARGV[8]
if id ~= '' then
  if redis.call('HSETNX', PAYLOAD, id, ARGV[10]) == 1 then
    redis.call('HSET', ATTEMPTS, id, ARGV[12])
    redis.call('HSET', TIMEOUT, id, ARGV[11])
    place_new(server_now(), id, ARGV[9], ARGV[13], ARGV[12])
    flush_places(true)
  end
  redis.call('HSET', S, 'last_job', id)
end
redis.call('HSET', S, 'next', ARGV[5], 'next_ms', ARGV[6], 'last', ARGV[4])
index_next(key, '0', ARGV[5])
return 1
"""
)


class RedisSchedules(BaseScheduleStore):
    """The schedule store half of the Redis queue (needs its connection and prefix)."""

    conn: Connection
    prefix: str

    def _init_schedules(self) -> None:
        script = self.conn.client.register_script
        self._upsert_schedule = script(UPSERT_SCHEDULE)
        self._pause_schedule = script(PAUSE_SCHEDULE)
        self._delete_schedule = script(DELETE_SCHEDULE)
        self._claim_tick = script(CLAIM_TICK)

    def _skey(self, key: str) -> str:
        return f"{self.prefix}:s:k:{key}"

    def _read(self, keys: list[str], what: str) -> list[Schedule]:
        if not keys:
            return []

        def work() -> list[Any]:
            pipe = self.conn.client.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(self._skey(key), _FIELDS)
            return pipe.execute()

        rows = self.conn.run(what, work)
        return [s for key, row in zip(keys, rows, strict=True) if (s := _from_fields(key, row)) is not None]

    def upsert_schedule(self, schedule: Schedule) -> Schedule:
        payload = serialization.dumps(schedule.model_dump(mode="json"), what=f"schedule {schedule.key}")
        nxt = schedule.next_run_at
        args = [
            self.prefix,
            schedule.key,
            payload,
            "1" if schedule.paused else "0",
            _num(nxt),
            "" if nxt is None else tick_ms(nxt),
            _num(schedule.last_run_at),
            schedule.last_job_id or "",
        ]
        self.conn.run("storing a schedule", lambda: self._upsert_schedule(args=args))
        return schedule

    def get_schedule(self, key: str) -> Schedule | None:
        found = self._read([key], "reading a schedule")
        return found[0] if found else None

    def list_schedules(self) -> list[Schedule]:
        keys = self.conn.run("listing schedules", lambda: self.conn.client.zrange(f"{self.prefix}:s:all", 0, -1))
        return self._read(_decoded(keys), "listing schedules")

    def due_schedules(self, now: float) -> list[Schedule]:
        keys = self.conn.run(
            "reading due schedules",
            lambda: self.conn.client.zrangebyscore(f"{self.prefix}:s:next", "-inf", now),
        )
        return [s for s in self._read(_decoded(keys), "reading due schedules") if not s.paused]

    def next_due_at(self) -> float | None:
        first = self.conn.run(
            "polling schedules", lambda: self.conn.client.zrange(f"{self.prefix}:s:next", 0, 0, withscores=True)
        )
        return float(cast("list[tuple[bytes, float]]", first)[0][1]) if first else None

    def set_schedule_paused(self, key: str, paused: bool) -> Schedule | None:
        args = [self.prefix, key, "1" if paused else "0"]
        if not self.conn.run("pausing a schedule", lambda: self._pause_schedule(args=args)):
            return None
        return self.get_schedule(key)

    def delete_schedule(self, key: str) -> bool:
        return bool(self.conn.run("cancelling a schedule", lambda: self._delete_schedule(args=[self.prefix, key])))

    def claim_tick(self, key: str, tick: float, job: Job | None, next_run_at: float | None) -> bool:
        args: list[Any] = [
            self.prefix,
            key,
            tick_ms(tick),
            repr(tick),
            _num(next_run_at),
            "" if next_run_at is None else tick_ms(next_run_at),
            _KEEP_TICKS_MS,
        ]
        if job is None:
            args += ["", 0, "", 0, 0, ""]
        else:
            # An offset, not a timestamp: the script adds it to the server's clock.
            args += [job.id, repr(job.due_at - time.time()), job.to_bytes(), repr(job.timeout_secs or 0), job.attempts]
            args.append(extras_of(job))
        # A retry after a lost reply finds the tick claimed (by that first call): the
        # job is queued either way, and this process reports the tick as not its own.
        return bool(self.conn.run("claiming a scheduled tick", lambda: self._claim_tick(args=args)))
