"""Job control and looking, on the Redis queue (:class:`nuvom.redis.RedisJobQueue`):
cancelling a waiting job, cancel requests for claimed ones, rate limits shared
by every worker, counts by named queue, the jobs waiting, a job's dependents.

Keys (under the queue's prefix; the layout is in docs/redis.md)::

    <prefix>:q:cancel        set: claimed jobs whose cancel was asked for
    <prefix>:rate:<key>      string: a rate limit's theoretical arrival time (GCRA)
    <prefix>:q:queues        set: the named queues used (the default one is implied)

Each change is one Lua script; a cancel request is dropped by the script that
takes its job out of the queue (``_lua``'s ``leave``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nuvom.job import Job, JobStatus
from nuvom.redis._lua import BASE, LEAVING, PLACING

if TYPE_CHECKING:
    from nuvom.redis._connection import Connection

__all__ = ["RedisJobControl"]

# ARGV: prefix, id. Takes a job that waits (ready, delayed or waiting for its
# parents; not claimed) out of the queue, releasing what waited only for it.
# Returns {payload, attempts}, or false when it is not waiting.
CANCEL = (
    BASE
    + PLACING
    + LEAVING
    + """
local id = ARGV[2]
local payload = redis.call('HGET', PAYLOAD, id)
if not payload or redis.call('HEXISTS', TOKEN, id) == 1 then
  return false
end
local attempts = redis.call('HGET', ATTEMPTS, id) or '0'
leave({id}, false)
return {payload, attempts}
"""
)

# ARGV: prefix, id. Records a cancel request for a claimed job; 1, or 0 when it is not claimed.
REQUEST_CANCEL = (
    BASE
    + PLACING
    + LEAVING
    + """
if redis.call('HEXISTS', TOKEN, ARGV[2]) == 0 then
  return 0
end
redis.call('SADD', CANCEL, ARGV[2])
return 1
"""
)

# ARGV: prefix, key, limit, per_secs. GCRA on the server's clock: one stored
# time per key, the time the next start would be due at the steady rate. Returns
# '0' when a start was taken, else the seconds until one frees (a string: Lua
# numbers reach the client as integers).
RATE = (
    BASE
    + """
local now = server_now()
local key, per = P .. ':rate:' .. ARGV[2], tonumber(ARGV[4])
local tat = math.max(tonumber(redis.call('GET', key)) or now, now) + per / tonumber(ARGV[3])
local wait = tat - now - per
if wait > 0 then
  return tostring(wait)
end
-- Gone once it is in the past: a missing key means the same as a past time.
redis.call('SET', key, string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1)
return '0'
"""
)

# ARGV: prefix. The server's time, then per queue (default first, then the named
# ones by name): name, waiting (ready and delayed), waiting for parents,
# retrying, claimed, the end of its last lease ('' if none).
STATE = (
    BASE
    + """
local names = redis.call('SMEMBERS', P .. ':q:queues')
table.sort(names)
table.insert(names, 1, DEFAULT_Q)
local out = {tostring(server_now())}
for _, q in ipairs(names) do
  local leases = qkey('leases', q)
  local last = redis.call('ZRANGE', leases, -1, -1, 'WITHSCORES')
  out[#out + 1] = q
  out[#out + 1] = redis.call('ZCARD', qkey('ready', q)) + redis.call('ZCARD', qkey('due', q))
  out[#out + 1] = redis.call('SCARD', qkey('waiting', q))
  out[#out + 1] = redis.call('SCARD', qkey('retry', q))
  out[#out + 1] = redis.call('ZCARD', leases)
  out[#out + 1] = last[2] or ''
end
return out
"""
)

# ARGV: prefix, limit. Up to limit waiting jobs, next claimed first: the ready
# ones of every queue by priority and arrival, then the delayed ones by due
# time. Returns {id, attempts, payload, ...}.
PEEK = (
    BASE
    + """
local limit = tonumber(ARGV[2])
local names = redis.call('SMEMBERS', P .. ':q:queues')
names[#names + 1] = DEFAULT_Q
local ready, later = {}, {}
for _, q in ipairs(names) do
  for kind, into in pairs({ready = ready, due = later}) do
    local got = redis.call('ZRANGE', qkey(kind, q), 0, limit - 1, 'WITHSCORES')
    for i = 1, #got, 2 do into[#into + 1] = {tonumber(got[i + 1]), got[i]} end
  end
end
local function first(a, b) return a[1] < b[1] end
table.sort(ready, first)
table.sort(later, first)
local ids = {}
for _, list in ipairs({ready, later}) do
  for _, e in ipairs(list) do
    if #ids < limit then ids[#ids + 1] = e[2] end
  end
end
if #ids == 0 then return {} end
local payloads, counts = hmget(PAYLOAD, ids), hmget(ATTEMPTS, ids)
local out = {}
for k, id in ipairs(ids) do
  if payloads[k] then
    out[#out + 1] = id
    out[#out + 1] = counts[k] or '0'
    out[#out + 1] = payloads[k]
  end
end
return out
"""
)


def _waiting_job(payload: bytes, attempts: Any) -> Job:
    job = Job.from_bytes(payload)
    job.attempts = int(attempts or 0)
    return job


class RedisJobControl:
    """Mixed into :class:`~nuvom.redis.RedisJobQueue` ahead of
    :class:`~nuvom.plugins.contracts.BaseJobQueue` (needs its ``conn`` and ``prefix``)."""

    conn: Connection
    prefix: str

    def _init_control(self) -> None:
        script = self.conn.client.register_script
        self._cancel_script = script(CANCEL)
        self._request_cancel = script(REQUEST_CANCEL)
        self._rate = script(RATE)
        self._state_script = script(STATE)
        self._peek = script(PEEK)
        self._cancel_key = f"{self.prefix}:q:cancel"

    # -- cancelling -----------------------------------------------------------
    def cancel(self, job_id: str) -> Job | None:
        """One script: a waiting job (ready, delayed, or waiting for its parents)
        leaves the queue, and the jobs that waited only for it are released."""
        found = self.conn.run("cancelling a job", lambda: self._cancel_script(args=[self.prefix, job_id]))
        if not found:
            return None
        job = _waiting_job(found[0], found[1])
        if job.status is JobStatus.WAITING:
            job.status = JobStatus.PENDING
        return job

    def request_cancel(self, job_id: str) -> bool:
        return bool(self.conn.run("asking to cancel a job", lambda: self._request_cancel(args=[self.prefix, job_id])))

    def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        """One ``SMISMEMBER``."""
        ids = list(job_ids)
        if not ids:
            return set()
        found = self.conn.run("reading cancel requests", lambda: self.conn.client.smismember(self._cancel_key, ids))
        return {job_id for job_id, asked in zip(ids, found, strict=True) if asked}

    # -- rate limits ----------------------------------------------------------
    def acquire_rate(self, key: str, limit: int, per_secs: float) -> float:
        """One script: GCRA on one stored time per key, on the server's clock,
        shared by every worker of the server and prefix."""
        args: list[Any] = [self.prefix, key, limit, repr(per_secs)]
        return float(self.conn.run("taking a rate-limited start", lambda: self._rate(args=args)))

    # -- looking --------------------------------------------------------------
    def dependents(self, job_id: str) -> list[str]:
        key = f"{self.prefix}:q:children:{job_id}"
        members: Any = self.conn.run("reading a job's dependents", lambda: self.conn.client.smembers(key))
        return sorted(m.decode() for m in members)

    def peek(self, limit: int = 50) -> list[Job]:
        reply = self.conn.run("listing waiting jobs", lambda: self._peek(args=[self.prefix, max(0, limit)]))
        jobs = []
        for i in range(0, len(reply), 3):
            job = _waiting_job(reply[i + 2], reply[i + 1])
            if job.status is JobStatus.WAITING:
                job.status = JobStatus.PENDING  # released: it is ready or delayed now
            jobs.append(job)
        return jobs

    def _state(self) -> tuple[float, list[tuple[str, int, int, int, int, float | None]]]:
        """The server's time and, per queue: name, waiting (ready or delayed),
        waiting for parents, retrying, claimed, last lease end (server time)."""
        reply = self.conn.run("counting jobs", lambda: self._state_script(args=[self.prefix]))
        rows = []
        for i in range(1, len(reply), 6):
            name, due, blocked, retrying, claimed, last = reply[i : i + 6]
            rows.append(
                (name.decode(), int(due), int(blocked), int(retrying), int(claimed), float(last) if last else None)
            )
        return float(reply[0]), rows

    def queue_counts(self) -> dict[str, dict[str, int]]:
        """``default`` and every named queue used on this server and prefix."""
        return {
            name: {"queued": max(0, due + blocked - retrying), "retrying": retrying, "running": claimed}
            for name, due, blocked, retrying, claimed, _ in self._state()[1]
        }

    def counts(self) -> dict[str, int]:
        totals = {"queued": 0, "retrying": 0, "running": 0}
        for counts in self.queue_counts().values():
            for state, n in counts.items():
                totals[state] += n
        return totals

    def qsize(self) -> int:
        return sum(due + blocked for _, due, blocked, _, _, _ in self._state()[1])

    def running(self) -> int:
        """Number of claimed jobs (running somewhere, or held by a dead worker until its lease ends)."""
        return sum(claimed for *_, claimed, _ in self._state()[1])

    def claims_held(self) -> tuple[int, float | None]:
        server_now, rows = self._state()
        ends = [last for *_, last in rows if last is not None]
        # Lease ends are the server's time: moved onto this host's clock.
        skew = time.time() - server_now
        return sum(row[4] for row in rows), (max(ends) + skew) if ends else None
