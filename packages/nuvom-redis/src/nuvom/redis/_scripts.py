"""The Lua scripts of the queue: each step that changes more than one key runs
as one script, so a crash or a lost connection between two commands can never
lose or double a job. Their shared parts (key names, where a job waits, what
happens when it leaves) are in ``_lua``; the schedules' scripts are in
``_schedules``.

Every script takes the key prefix as ``ARGV[1]``. Times are the server's clock
(``TIME``): leases and due times mean the same on every host, whatever its
clock says. Clients pass *offsets* (``due_at - their now``), not timestamps.
"""

from __future__ import annotations

from nuvom.redis._lua import BASE, LEASES, LEAVING, PLACE_NEW, PLACING

__all__ = [
    "ACK",
    "CLAIM",
    "CLEAR",
    "COMPLETE",
    "ENQUEUE",
    "ENQUEUE_UNIQUE",
    "EXTEND",
    "REQUEUE",
    "START",
    "STORE",
]

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

# ARGV: prefix, then (id, offset, payload, timeout_secs (0: default), attempts,
# extras ('' or JSON: q, p, u, pa)) per job. Returns the ids that were already
# queued (left untouched).
ENQUEUE = (
    BASE
    + PLACING
    + PLACE_NEW
    + """
local now = server_now()
local dup, attempts, timeouts = {}, {}, {}
for i = 2, #ARGV, 6 do
  local id = ARGV[i]
  if redis.call('HSETNX', PAYLOAD, id, ARGV[i + 2]) == 1 then
    attempts[#attempts + 1] = id
    attempts[#attempts + 1] = ARGV[i + 4]
    timeouts[#timeouts + 1] = id
    timeouts[#timeouts + 1] = ARGV[i + 3]
    if ARGV[i + 5] == '' and ARGV[i + 4] == '0' then
      place(now, DEFAULT_Q, 0, now + tonumber(ARGV[i + 1]), id)  -- nearly every job
    else
      place_new(now, id, ARGV[i + 1], ARGV[i + 5], ARGV[i + 4])
    end
  else
    dup[#dup + 1] = id
  end
end
many('HSET', ATTEMPTS, attempts)
many('HSET', TIMEOUT, timeouts)
flush_places(true)
return dup
"""
)

# ARGV: prefix, unique key, then one job as ENQUEUE's (its extras name the key).
# Queues the job unless a job still in the queue holds the key; returns the
# holder's id (the job's own when it was queued now).
ENQUEUE_UNIQUE = (
    BASE
    + PLACING
    + PLACE_NEW
    + """
local UNIQUE = P .. ':q:unique'
local key, id = ARGV[2], ARGV[3]
local holder = redis.call('HGET', UNIQUE, key)
-- A holder no longer in the queue (removed by a release without unique keys) lets go.
if holder and redis.call('HEXISTS', PAYLOAD, holder) == 1 then
  return holder
end
redis.call('HSET', UNIQUE, key, id)
if redis.call('HSETNX', PAYLOAD, id, ARGV[5]) == 0 then
  return id  -- queued by an earlier call whose reply was lost
end
redis.call('HSET', ATTEMPTS, id, ARGV[7])
redis.call('HSET', TIMEOUT, id, ARGV[6])
place_new(server_now(), id, ARGV[4], ARGV[8], ARGV[7])
flush_places(true)
return id
"""
)

# ARGV: prefix, batch size, how many expired leases to reclaim per queue, then
# the lease rule's lease_secs, default timeout, factor, margin, then how many of
# the jobs claimed start now (their start marks, as START's:
# BaseJobQueue.pop_batch_starting), then the queues served, in order.
# Returns {token, wait, id, attempts, payload, ...}: token 0 when nothing was
# claimed; wait (when fewer than the batch were claimed) the seconds until
# something may be due next, '' if nothing waits.
CLAIM = (
    BASE
    + PLACING
    + LEAVING
    + LEASES
    + """
local now = server_now()
local want, reclaim = tonumber(ARGV[2]), tonumber(ARGV[3])
local queues = {}
for i = 9, #ARGV do queues[#queues + 1] = ARGV[i] end
if #queues == 0 then queues[1] = DEFAULT_Q end
for _, q in ipairs(queues) do
  -- Leases that ran out: their workers are gone (or too slow). Dropping the token
  -- is the fence: the old holder can no longer complete, requeue or renew.
  local leases = qkey('leases', q)
  local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, reclaim)
  if #expired > 0 then
    -- A claim that never started (its worker died, or stalled, with the job still
    -- in its buffer) is handed back as if never made: its attempt is undone. One
    -- that started counts, and the next claim records it as a run lost with its worker.
    local started, counts, extras = hmget(STARTED, expired), hmget(ATTEMPTS, expired), hmget(EXTRA, expired)
    local retry = {}
    for k, id in ipairs(expired) do
      local n = tonumber(counts[k]) or 0
      if not started[k] then
        n = n - 1
        redis.call('HINCRBY', ATTEMPTS, id, -1)
      end
      if n > 0 then retry[#retry + 1] = id end
      place(now, q, extras[k] and cjson.decode(extras[k]).p or 0, now, id)
    end
    many('ZREM', leases, expired)
    many('HDEL', TOKEN, expired)
    many('HDEL', STARTED, expired)
    many('SADD', qkey('retry', q), retry)
  end
  -- Jobs whose not-before time came join the ready set, in due order.
  local due = qkey('due', q)
  local came = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, CHUNK)
  if #came > 0 then
    many('ZREM', due, came)
    local extras = hmget(EXTRA, came)
    for k, id in ipairs(came) do place(now, q, extras[k] and cjson.decode(extras[k]).p or 0, now, id) end
  end
end
flush_places(false)
-- The first queue's jobs first, then the next queue's: one range per queue.
local ids, qs = {}, {}
for _, q in ipairs(queues) do
  local room = want - #ids
  if room <= 0 then break end
  local got = redis.call('ZPOPMIN', qkey('ready', q), room)
  for i = 1, #got, 2 do
    ids[#ids + 1] = got[i]
    qs[#qs + 1] = q
  end
end
if #ids == 0 then
  return {0, next_wait(now, queues)}
end
local rule = {tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])}
local tok = redis.call('INCR', SEQ)
local payloads, timeouts, counts = hmget(PAYLOAD, ids), hmget(TIMEOUT, ids), hmget(ATTEMPTS, ids)
local out = {tok, ''}
local leases, tokens, attempts, gone, started, retried = {}, {}, {}, {}, {}, {}
local start = tonumber(ARGV[8] or 0)
for k, id in ipairs(ids) do
  local payload = payloads[k]
  if payload then
    -- The claim counts the attempt in storage (undone above if it expires
    -- without a start mark), so a run lost with its worker counts.
    local before = tonumber(counts[k]) or 0
    local n = before + 1
    local q = qs[k]
    local list = leases[q]
    if not list then list = {}; leases[q] = list end
    list[#list + 1] = now + lease_of(timeouts[k], rule[1], rule[2], rule[3], rule[4])
    list[#list + 1] = id
    if before > 0 then retried[#retried + 1] = q; retried[#retried + 1] = id end
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
for q, list in pairs(leases) do many('ZADD', qkey('leases', q), list) end
for i = 1, #retried, 2 do redis.call('SREM', qkey('retry', retried[i]), retried[i + 1]) end
many('HSET', TOKEN, tokens)
many('HSET', ATTEMPTS, attempts)
many('HSET', STARTED, started)
leave(gone, false)
if #ids < want then
  out[2] = next_wait(now, queues)
else
  for _, q in ipairs(queues) do
    if redis.call('ZCARD', qkey('ready', q)) > 0 then
      wake_one(q)
      break
    end
  end
end
return out
"""
)

# ARGV: prefix, then (id, token) pairs; token '' settles whatever claim there is.
ACK = (
    BASE
    + PLACING
    + LEAVING
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
leave(settled, false)
return 0
"""
)

# ARGV: prefix, then (id, token, offset, payload, attempts, timeout_secs, queue,
# priority) per job. A job whose claim was taken over is left to its new holder;
# returns those ids.
REQUEUE = (
    BASE
    + PLACING
    + """
local now = server_now()
local skipped = {}
for i = 2, #ARGV, 8 do
  local id, tok, q = ARGV[i], ARGV[i + 1], ARGV[i + 6]
  if tok ~= '' and redis.call('HGET', TOKEN, id) ~= tok then
    skipped[#skipped + 1] = id
  else
    redis.call('ZREM', qkey('leases', q), id)
    if tok == '' then
      -- Unfenced: the job may be waiting already; it is moved, never doubled.
      redis.call('ZREM', qkey('ready', q), id)
      redis.call('ZREM', qkey('due', q), id)
    end
    redis.call('HDEL', TOKEN, id)
    redis.call('HDEL', STARTED, id)
    redis.call('HSET', PAYLOAD, id, ARGV[i + 3])
    redis.call('HSET', ATTEMPTS, id, ARGV[i + 4])
    redis.call('HSET', TIMEOUT, id, ARGV[i + 5])
    if tonumber(ARGV[i + 4]) > 0 then
      redis.call('SADD', qkey('retry', q), id)
    else
      redis.call('SREM', qkey('retry', q), id)
    end
    place(now, q, tonumber(ARGV[i + 7]), now + tonumber(ARGV[i + 2]), id)
  end
end
flush_places(true)
return skipped
"""
)

# ARGV: prefix, the lease rule's four numbers (as CLAIM), then (id, token) pairs.
# Renews the leases still held.
EXTEND = (
    BASE
    + LEASES
    + """
local now = server_now()
local rule = {tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])}
for i = 6, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', TOKEN, id) == ARGV[i + 1] then
    local x = redis.call('HGET', EXTRA, id)
    local leases = qkey('leases', x and cjson.decode(x).q or DEFAULT_Q)
    redis.call('ZADD', leases, 'XX', now + lease_for(id, rule[1], rule[2], rule[3], rule[4]), id)
  end
end
return 0
"""
)

# ARGV: prefix, the lease rule's four numbers (as CLAIM), queue, id, token, keep
# ('1': the job starts right after its claim, whose lease still stands).
# The start mark: only while the claim is still this token's, the claim is marked
# started (it counts as an attempt from now on) and its lease runs from now.
# Returns 1, or 0 when the claim was lost (the job must not run).
START = (
    BASE
    + LEASES
    + """
local q, id, tok = ARGV[6], ARGV[7], ARGV[8]
if redis.call('HGET', TOKEN, id) ~= tok then
  return 0
end
redis.call('HSET', STARTED, id, 1)
if ARGV[9] ~= '1' then
  local rule = {tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])}
  redis.call('ZADD', qkey('leases', q), 'XX', server_now() + lease_for(id, rule[1], rule[2], rule[3], rule[4]), id)
end
return 1
"""
)

# Drops every job not claimed, of every queue (ready, due, waiting for parents); returns how many.
CLEAR = (
    BASE
    + PLACING
    + LEAVING
    + """
local names = redis.call('SMEMBERS', P .. ':q:queues')
names[#names + 1] = DEFAULT_Q
local ids = {}
for _, q in ipairs(names) do
  for _, kind in ipairs({'ready', 'due'}) do
    for _, id in ipairs(redis.call('ZRANGE', qkey(kind, q), 0, -1)) do ids[#ids + 1] = id end
  end
  for _, id in ipairs(redis.call('SMEMBERS', qkey('waiting', q))) do ids[#ids + 1] = id end
end
leave(ids, false)
return #ids
"""
)

# ARGV: prefix, ttl in ms (0: keep), then (id, status, task, finished_at, payload) per job.
STORE = (
    BASE
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
# the claim it ran under still holds (the jobs waiting only for it are released
# in the same step); returns the ids whose completion was ignored.
COMPLETE = (
    BASE
    + PLACING
    + LEAVING
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
    local x = redis.call('HGET', EXTRA, id)
    local leases = qkey('leases', x and cjson.decode(x).q or DEFAULT_Q)
    ok = redis.call('ZSCORE', leases, id) ~= false and redis.call('HGET', ATTEMPTS, id) == ARGV[i + 2]
  end
  if ok then
    done[#done + 1] = id
    for j = 0, 4 do rec[#rec + 1] = ARGV[i + (j == 0 and 0 or j + 2)] end
  else
    ignored[#ignored + 1] = id
  end
end
leave(done, true)
store_many(rec, tonumber(ARGV[2]))
return ignored
"""
)
