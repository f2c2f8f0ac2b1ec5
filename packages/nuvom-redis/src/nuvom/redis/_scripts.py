"""The Lua scripts: each step that changes more than one key runs as one
script, so a crash or a lost connection between two commands can never lose
or double a job.

Every script takes the key prefix as ``ARGV[1]`` and builds its key names
from it (the layout is in docs/redis.md). Times are the server's clock
(``TIME``): leases and due times mean the same on every host, whatever its
clock says. Clients pass *offsets* (``due_at - their now``), not timestamps.
"""

from __future__ import annotations

__all__ = [
    "ACK",
    "CLAIM",
    "CLAIM_TICK",
    "CLEAR",
    "COMPLETE",
    "DELETE_SCHEDULE",
    "ENQUEUE",
    "EXTEND",
    "PAUSE_SCHEDULE",
    "REQUEUE",
    "START",
    "STORE",
    "UPSERT_SCHEDULE",
]

_COMMON = """
local P = ARGV[1]
local DUE, LEASES = P .. ':q:due', P .. ':q:leases'
local PAYLOAD, ATTEMPTS, TIMEOUT, TOKEN = P .. ':q:payload', P .. ':q:attempts', P .. ':q:timeout', P .. ':q:token'
local SEQ, WAKE = P .. ':q:seq', P .. ':q:wake'
-- Claims that started (BaseJobQueue.mark_started): only those count as attempts.
local STARTED = P .. ':q:started'

local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- Batches: one command for many jobs, not one per job (a redis.call costs
-- more than the work it does on a small job; measured in docs/redis.md). Lua
-- unpacks at most ~8000 values, so long lists go in slices of CHUNK.
local CHUNK = 1000

local function many(cmd, key, list)
  for i = 1, #list, CHUNK do
    redis.call(cmd, key, unpack(list, i, math.min(i + CHUNK - 1, #list)))
  end
end

local function hmget(key, ids)
  if #ids <= CHUNK then
    return redis.call('HMGET', key, unpack(ids))
  end
  local out = {}
  for i = 1, #ids, CHUNK do
    local part = redis.call('HMGET', key, unpack(ids, i, math.min(i + CHUNK - 1, #ids)))
    for j = 1, #part do out[#out + 1] = part[j] end
  end
  return out
end

-- One wake-up at a time is enough: a worker that claims and sees more work
-- due wakes the next one (see CLAIM), so idle workers join in a chain.
local function wake_one()
  if redis.call('LLEN', WAKE) == 0 then
    redis.call('RPUSH', WAKE, 1)
  end
end

-- Queue one job unless its id is already queued; false for a duplicate.
local function enqueue_one(now, id, offset, payload, timeout, attempts)
  if redis.call('HSETNX', PAYLOAD, id, payload) == 0 then
    return false
  end
  redis.call('HSET', ATTEMPTS, id, attempts)
  redis.call('HSET', TIMEOUT, id, timeout)
  redis.call('ZADD', DUE, now + tonumber(offset), id)
  return true
end

-- Drop every trace of jobs from the queue.
local function forget_many(ids)
  if #ids == 0 then return end
  many('ZREM', DUE, ids)
  many('ZREM', LEASES, ids)
  many('HDEL', PAYLOAD, ids)
  many('HDEL', ATTEMPTS, ids)
  many('HDEL', TIMEOUT, ids)
  many('HDEL', TOKEN, ids)
  many('HDEL', STARTED, ids)
end

local function forget(id)
  forget_many({id})
end

-- nuvom.job.lease_secs_for, with the claimer's settings: ARGV lease_secs,
-- default timeout, factor, margin (the constants come from nuvom.job).
local function lease_of(timeout, lease_secs, default_timeout, factor, margin)
  local t = tonumber(timeout or 0) or 0
  if t <= 0 then t = default_timeout end
  return math.max(lease_secs, t * factor + margin)
end

local function lease_for(id, lease_secs, default_timeout, factor, margin)
  return lease_of(redis.call('HGET', TIMEOUT, id), lease_secs, default_timeout, factor, margin)
end

-- Seconds until a waiting job is due or a lease runs out ('' if neither).
local function next_wait(now)
  local nxt = false
  local d = redis.call('ZRANGE', DUE, 0, 0, 'WITHSCORES')
  if #d > 0 then nxt = tonumber(d[2]) end
  local l = redis.call('ZRANGE', LEASES, 0, 0, 'WITHSCORES')
  if #l > 0 and (not nxt or tonumber(l[2]) < nxt) then nxt = tonumber(l[2]) end
  if not nxt then return '' end
  return tostring(nxt - now)
end
"""

_STORE_MANY = """
local STATUSES = {'SUCCESS', 'FAILED', 'PENDING', 'RUNNING', 'RETRYING'}

-- Records: a flat list of (id, status, task, finished, payload). One SET per
-- record; the indexes, the task names and the waiters' wake-ups in one
-- command per index, not per record.
local function store_many(rec, ttl_ms)
  local by_key, tasks, ids = {}, {}, {}
  local function add(key, score, id)
    local list = by_key[key]
    if not list then list = {}; by_key[key] = list end
    list[#list + 1] = score
    list[#list + 1] = id
  end
  for i = 1, #rec, 5 do
    local id, status, task, finished, payload = rec[i], rec[i + 1], rec[i + 2], rec[i + 3], rec[i + 4]
    local old
    if ttl_ms > 0 then
      old = redis.call('SET', P .. ':res:' .. id, payload, 'PX', ttl_ms, 'GET')
    else
      old = redis.call('SET', P .. ':res:' .. id, payload, 'GET')
    end
    -- A record replaced with another status (a retried job) leaves its old index.
    -- A first record has no index entries to leave (list_jobs also skips an entry
    -- whose record has another status, e.g. one stored again after it expired).
    if old then
      for _, s in ipairs(STATUSES) do
        if s ~= status and redis.call('ZREM', P .. ':idx:s:' .. s, id) == 1 then
          redis.call('ZREM', P .. ':idx:t:' .. s .. ':' .. task, id)
        end
      end
    end
    add(P .. ':idx:s:' .. status, finished, id)
    add(P .. ':idx:t:' .. status .. ':' .. task, finished, id)
    tasks[task] = true
    ids[#ids + 1] = id
  end
  for key, list in pairs(by_key) do
    many('ZADD', key, list)
  end
  local names = {}
  for task in pairs(tasks) do names[#names + 1] = task end
  many('SADD', P .. ':idx:tasks', names)
  if redis.call('SCARD', P .. ':waiters') > 0 then
    for _, id in ipairs(ids) do
      if redis.call('SREM', P .. ':waiters', id) == 1 then
        local wake = P .. ':wake:' .. id
        redis.call('RPUSH', wake, 1)
        redis.call('EXPIRE', wake, 60)
      end
    end
  end
end
"""

# ARGV: prefix, then (id, offset, payload, timeout_secs (0: default), attempts) per job.
# Returns the ids that were already queued (left untouched).
ENQUEUE = (
    _COMMON
    + """
local now = server_now()
local dup, due, attempts, timeouts = {}, {}, {}, {}
for i = 2, #ARGV, 5 do
  local id = ARGV[i]
  if redis.call('HSETNX', PAYLOAD, id, ARGV[i + 2]) == 1 then
    attempts[#attempts + 1] = id
    attempts[#attempts + 1] = ARGV[i + 4]
    timeouts[#timeouts + 1] = id
    timeouts[#timeouts + 1] = ARGV[i + 3]
    due[#due + 1] = now + tonumber(ARGV[i + 1])
    due[#due + 1] = id
  else
    dup[#dup + 1] = id
  end
end
many('HSET', ATTEMPTS, attempts)
many('HSET', TIMEOUT, timeouts)
many('ZADD', DUE, due)
wake_one()
return dup
"""
)

# ARGV: prefix, batch size, how many expired leases to reclaim, then the lease
# rule's lease_secs, default timeout, factor, margin, then how many of the jobs
# claimed start now (their start marks, as START's: BaseJobQueue.pop_batch_starting).
# Returns {token, wait, id, attempts, payload, ...}: token 0 when nothing was
# claimed; wait (when fewer than the batch were claimed) the seconds until
# something may be due next, '' if nothing waits.
CLAIM = (
    _COMMON
    + """
local now = server_now()
local want = tonumber(ARGV[2])
-- Leases that ran out: their workers are gone (or too slow). Dropping the token
-- is the fence: the old holder can no longer complete, requeue or renew.
local expired = redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
if #expired > 0 then
  local back = {}
  -- A claim that never started (its worker died, or stalled, with the job still
  -- in its buffer) is handed back as if never made: its attempt is undone. One
  -- that started counts, and the next claim records it as a run lost with its worker.
  local started = hmget(STARTED, expired)
  for k, id in ipairs(expired) do
    back[#back + 1] = now
    back[#back + 1] = id
    if not started[k] then
      redis.call('HINCRBY', ATTEMPTS, id, -1)
    end
  end
  many('ZREM', LEASES, expired)
  many('HDEL', TOKEN, expired)
  many('HDEL', STARTED, expired)
  many('ZADD', DUE, back)
end
local ids = redis.call('ZRANGEBYSCORE', DUE, '-inf', now, 'LIMIT', 0, want)
if #ids == 0 then
  return {0, next_wait(now)}
end
local rule = {tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])}
local tok = redis.call('INCR', SEQ)
many('ZREM', DUE, ids)
local payloads, timeouts, counts = hmget(PAYLOAD, ids), hmget(TIMEOUT, ids), hmget(ATTEMPTS, ids)
local out = {tok, ''}
local leases, tokens, attempts, gone, started = {}, {}, {}, {}, {}
local start = tonumber(ARGV[8] or 0)
for k, id in ipairs(ids) do
  local payload = payloads[k]
  if payload then
    -- The claim counts the attempt in storage (undone above if it expires
    -- without a start mark), so a run lost with its worker counts.
    local n = (tonumber(counts[k]) or 0) + 1
    leases[#leases + 1] = now + lease_of(timeouts[k], rule[1], rule[2], rule[3], rule[4])
    leases[#leases + 1] = id
    tokens[#tokens + 1] = id
    tokens[#tokens + 1] = tok
    attempts[#attempts + 1] = id
    attempts[#attempts + 1] = n
    out[#out + 1] = id
    out[#out + 1] = n
    out[#out + 1] = payload
    -- The lease set here runs from now, as the start mark's would.
    if #started < start * 2 then
      started[#started + 1] = id
      started[#started + 1] = 1
    end
  else
    gone[#gone + 1] = id
  end
end
many('ZADD', LEASES, leases)
many('HSET', TOKEN, tokens)
many('HSET', ATTEMPTS, attempts)
many('HSET', STARTED, started)
forget_many(gone)
if #ids < want then
  out[2] = next_wait(now)
elseif #redis.call('ZRANGEBYSCORE', DUE, '-inf', now, 'LIMIT', 0, 1) > 0 then
  wake_one()
end
return out
"""
)

# ARGV: prefix, then (id, token) pairs; token '' settles whatever claim there is.
ACK = (
    _COMMON
    + """
local ids, toks = {}, {}
for i = 2, #ARGV, 2 do
  ids[#ids + 1] = ARGV[i]
  toks[#toks + 1] = ARGV[i + 1]
end
local held = hmget(TOKEN, ids)
local settled = {}
for k, id in ipairs(ids) do
  if toks[k] == '' or held[k] == toks[k] then
    settled[#settled + 1] = id
  end
end
forget_many(settled)
return 0
"""
)

# ARGV: prefix, then (id, token, offset, payload, attempts, timeout_secs) per job.
# A job whose claim was taken over is left to its new holder; returns those ids.
REQUEUE = (
    _COMMON
    + """
local now = server_now()
local skipped = {}
for i = 2, #ARGV, 6 do
  local id, tok = ARGV[i], ARGV[i + 1]
  if tok ~= '' and redis.call('HGET', TOKEN, id) ~= tok then
    skipped[#skipped + 1] = id
  else
    redis.call('ZREM', LEASES, id)
    redis.call('HDEL', TOKEN, id)
    redis.call('HDEL', STARTED, id)
    redis.call('HSET', PAYLOAD, id, ARGV[i + 3])
    redis.call('HSET', ATTEMPTS, id, ARGV[i + 4])
    redis.call('HSET', TIMEOUT, id, ARGV[i + 5])
    redis.call('ZADD', DUE, now + tonumber(ARGV[i + 2]), id)
  end
end
wake_one()
return skipped
"""
)

# ARGV: prefix, the lease rule's four numbers (as CLAIM), then (id, token) pairs.
# Renews the leases still held.
EXTEND = (
    _COMMON
    + """
local now = server_now()
local rule = {tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])}
for i = 6, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', TOKEN, id) == ARGV[i + 1] then
    redis.call('ZADD', LEASES, 'XX', now + lease_for(id, rule[1], rule[2], rule[3], rule[4]), id)
  end
end
return 0
"""
)

# ARGV: prefix, the lease rule's four numbers (as CLAIM), id, token, keep ('1': the
# job starts right after its claim, whose lease still stands).
# The start mark: only while the claim is still this token's, the claim is marked
# started (it counts as an attempt from now on) and its lease runs from now.
# Returns 1, or 0 when the claim was lost (the job must not run).
START = (
    _COMMON
    + """
local id, tok = ARGV[6], ARGV[7]
if redis.call('HGET', TOKEN, id) ~= tok then
  return 0
end
redis.call('HSET', STARTED, id, 1)
if ARGV[8] ~= '1' then
  local rule = {tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])}
  redis.call('ZADD', LEASES, 'XX', server_now() + lease_for(id, rule[1], rule[2], rule[3], rule[4]), id)
end
return 1
"""
)

# Drops every waiting (not claimed) job; returns how many.
CLEAR = (
    _COMMON
    + """
local ids = redis.call('ZRANGE', DUE, 0, -1)
forget_many(ids)
return #ids
"""
)

# ARGV: prefix, ttl in ms (0: keep), then (id, status, task, finished_at, payload) per job.
STORE = (
    _COMMON
    + _STORE_MANY
    + """
local rec = {}
for i = 3, #ARGV do rec[#rec + 1] = ARGV[i] end
store_many(rec, tonumber(ARGV[2]))
return 0
"""
)

# ARGV: prefix, ttl in ms, then (id, token, attempts, status, task, finished_at, payload) per job.
# Stores the outcome and removes the job from the queue in one step, only while
# the claim it ran under still holds; returns the ids whose completion was ignored.
COMPLETE = (
    _COMMON
    + _STORE_MANY
    + """
local ids = {}
for i = 3, #ARGV, 7 do ids[#ids + 1] = ARGV[i] end
local held = hmget(TOKEN, ids)
local done, rec, ignored = {}, {}, {}
for k, id in ipairs(ids) do
  local i = 3 + (k - 1) * 7
  local tok, ok = ARGV[i + 1], false
  if tok ~= '' then
    ok = held[k] == tok
  else
    -- No token (a claim made before this process started): the claim at these attempts.
    ok = redis.call('ZSCORE', LEASES, id) ~= false and redis.call('HGET', ATTEMPTS, id) == ARGV[i + 2]
  end
  if ok then
    done[#done + 1] = id
    for j = 0, 4 do rec[#rec + 1] = ARGV[i + (j == 0 and 0 or j + 2)] end
  else
    ignored[#ignored + 1] = id
  end
end
forget_many(done)
store_many(rec, tonumber(ARGV[2]))
return ignored
"""
)

# -- schedules (``_schedules``) ---------------------------------------------------
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
    _COMMON
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
    _COMMON
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
    _COMMON
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
# payload, timeout_secs, attempts. Returns 1 when this call claimed the tick.
#
# Claiming the tick, queueing its job and moving the schedule on are one script:
# of racing workers exactly one wins, and no crash leaves one without the others.
# The tick set (not only next_ms) refuses a tick claimed before: an upsert that
# read the schedule before a claim may write an older next_run_at back.
CLAIM_TICK = (
    _COMMON
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
  if enqueue_one(server_now(), id, ARGV[9], ARGV[10], ARGV[11], ARGV[12]) then
    wake_one()
  end
  redis.call('HSET', S, 'last_job', id)
end
redis.call('HSET', S, 'next', ARGV[5], 'next_ms', ARGV[6], 'last', ARGV[4])
index_next(key, '0', ARGV[5])
return 1
"""
)
