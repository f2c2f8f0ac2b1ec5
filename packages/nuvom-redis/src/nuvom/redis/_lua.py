"""The Lua every queue script shares: key names, the server's clock, batched
commands, where a job waits (its queue, its priority, its parents) and what
happens when a job leaves the queue for good.

Every script takes the key prefix as ``ARGV[1]`` and builds its key names from
it (the layout is in docs/redis.md). Times are the server's clock (``TIME``).

A job's place in the queue:

* ``ready`` (a sorted set per named queue): due jobs, scored
  ``arrival - priority * SPAN``, so that a claim takes higher priorities first
  and, among equals, the first to arrive (an arrival number is drawn from one
  counter when the job enters the set);
* ``due`` (per queue): jobs with a not-before time, scored by it; the claim
  script moves those whose time came to ``ready`` (nothing polls them one by one);
* ``waiting`` (per queue): workflow jobs whose parents are still in the queue;
* ``leases`` (per queue): claimed jobs, scored by the lease's end.

Jobs that use nothing but the default queue at priority 0 have no other key: a
job that uses more (a named queue, a priority, a unique key, parents or
children) has an entry in ``<prefix>:q:x`` (JSON), and the scripts look only
there to learn it, one ``HMGET`` for a whole batch.
"""

from __future__ import annotations

import json

from nuvom.job import DEFAULT_QUEUE, Job

__all__ = ["COMMON", "extras_of"]


def extras_of(job: Job) -> str:
    """What the scripts must know of ``job`` beyond its payload (``place_new``'s
    ``ex``): ``""`` for a job of the default queue at priority 0 with no unique
    key nor parents (nearly every job: nothing more is stored for it)."""
    queue, priority, unique_key, flow = job.queue, job.priority, job.unique_key, job.flow
    if queue == DEFAULT_QUEUE and not priority and unique_key is None and flow is None:
        return ""
    x: dict[str, object] = {}
    if queue != DEFAULT_QUEUE:
        x["q"] = queue
    if priority:
        x["p"] = priority
    if unique_key is not None:
        x["u"] = unique_key
    if flow is not None:
        x["pa"] = list(flow.parents)
    return json.dumps(x, ensure_ascii=False)


COMMON = """
local P = ARGV[1]
local PAYLOAD, ATTEMPTS, TIMEOUT, TOKEN = P .. ':q:payload', P .. ':q:attempts', P .. ':q:timeout', P .. ':q:token'
local SEQ, ORDER = P .. ':q:seq', P .. ':q:order'
-- Claims that started (BaseJobQueue.mark_started): only those count as attempts.
local STARTED = P .. ':q:started'
-- id -> what a job uses beyond the default queue at priority 0 (JSON: q queue,
-- p priority, u unique key, b parents it waits for, at its due time, h has children).
local EXTRA = P .. ':q:x'
local UNIQUE, BLOCKERS, CANCEL, QUEUES = P .. ':q:unique', P .. ':q:blockers', P .. ':q:cancel', P .. ':q:queues'
local DEFAULT_Q = '@DEFAULT_QUEUE@'
-- Ready scores: arrival - priority * SPAN. Priorities are within +-10^6 (TaskOptions),
-- so scores stay integers a double holds exactly while arrivals stay below SPAN.
local SPAN = 8589934592

-- The default queue keeps the key names of releases without named queues
-- (<prefix>:q:due, :q:leases, :q:wake), so what they queued is still claimed.
local function qkey(kind, q)
  if q == DEFAULT_Q then return P .. ':q:' .. kind end
  return P .. ':q:' .. kind .. ':' .. q
end

local function children_key(id) return P .. ':q:children:' .. id end

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

local function push(groups, key, a, b)
  local list = groups[key]
  if not list then list = {}; groups[key] = list end
  list[#list + 1] = a
  if b ~= nil then list[#list + 1] = b end
end

-- One wake-up at a time per queue is enough: a worker that claims and sees more
-- work ready wakes the next one (see CLAIM), so idle workers join in a chain.
local function wake_one(q)
  local key = qkey('wake', q)
  if redis.call('LLEN', key) == 0 then
    redis.call('RPUSH', key, 1)
  end
end

local function decode(x)
  if not x then return nil end
  return cjson.decode(x)
end

local function queue_of(x) return (x and x.q) or DEFAULT_Q end
local function priority_of(x) return (x and x.p) or 0 end

-- Arrival numbers for `count` jobs entering ready sets; the first one.
local function renumber()
  -- Once per SPAN arrivals: every ready set is scored again from 1 in its order.
  local names = redis.call('SMEMBERS', QUEUES)
  names[#names + 1] = DEFAULT_Q
  local top = 0
  for _, q in ipairs(names) do
    local key = qkey('ready', q)
    local all = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    local again = {}
    for i = 1, #all, 2 do
      local priority = -math.floor(tonumber(all[i + 1]) / SPAN)
      again[#again + 1] = string.format('%.0f', (i + 1) / 2 - priority * SPAN)
      again[#again + 1] = all[i]
    end
    many('ZADD', key, again)
    top = math.max(top, #all / 2)
  end
  redis.call('SET', ORDER, top)
end

local function arrivals(count)
  local last = redis.call('INCRBY', ORDER, count)
  if last >= SPAN then
    renumber()
    last = redis.call('INCRBY', ORDER, count)
  end
  return last - count + 1
end

-- Placements of a script, written at its end in one command per key: jobs due
-- now go to their ready set in the order placed, later ones to their due set.
local ready_q, ready_p, ready_id, due_sets, woken = {}, {}, {}, {}, {}

local function to_ready(q, priority, id)
  local n = #ready_id + 1
  ready_q[n], ready_p[n], ready_id[n] = q, priority, id
end

local function to_due(q, at, id)
  push(due_sets, qkey('due', q), at, id)
  woken[q] = true
end

local function place(now, q, priority, at, id)
  if at > now then to_due(q, at, id) else to_ready(q, priority, id) end
end

-- Writes the placements; wakes a worker of each queue placed in if `wake`.
local function flush_places(wake)
  if #ready_id > 0 then
    local first = arrivals(#ready_id)
    local sets = {}
    for k = 1, #ready_id do
      local q = ready_q[k]
      push(sets, qkey('ready', q), string.format('%.0f', first + k - 1 - ready_p[k] * SPAN), ready_id[k])
      woken[q] = true
    end
    for key, list in pairs(sets) do many('ZADD', key, list) end
  end
  for key, list in pairs(due_sets) do many('ZADD', key, list) end
  if wake then
    for q in pairs(woken) do wake_one(q) end
  end
  ready_q, ready_p, ready_id, due_sets, woken = {}, {}, {}, {}, {}
end

-- A parent gains a waiting child: its entry says so (h), for when it leaves.
local function mark_parent(parent)
  local x = decode(redis.call('HGET', EXTRA, parent)) or {}
  if not x.h then
    x.h = 1
    redis.call('HSET', EXTRA, parent, cjson.encode(x))
  end
end

-- A job just stored (payload, attempts, timeout): where it waits. `ex` is ''
-- for a job of the default queue at priority 0 with no unique key nor parents,
-- else JSON (q, p, u, pa: its parents). Only parents still in the queue (their
-- payload is here) hold it back; a job with none is placed at once.
local function place_new(now, id, offset, ex, attempts)
  local at, x, q = now + tonumber(offset), nil, DEFAULT_Q
  if ex ~= '' then
    x = cjson.decode(ex)
    q = queue_of(x)
    if q ~= DEFAULT_Q then redis.call('SADD', QUEUES, q) end
    local parents = x.pa
    x.pa = nil
    if parents then
      local blockers, seen = {}, {}
      for _, parent in ipairs(parents) do
        if not seen[parent] and parent ~= id and redis.call('HEXISTS', PAYLOAD, parent) == 1 then
          blockers[#blockers + 1] = parent
        end
        seen[parent] = true
      end
      if #blockers > 0 then
        x.b, x.at = blockers, at
        redis.call('HSET', EXTRA, id, cjson.encode(x))
        redis.call('HSET', BLOCKERS, id, #blockers)
        redis.call('SADD', qkey('waiting', q), id)
        for _, parent in ipairs(blockers) do
          redis.call('SADD', children_key(parent), id)
          mark_parent(parent)
        end
        return
      end
    end
    if next(x) ~= nil then redis.call('HSET', EXTRA, id, cjson.encode(x)) end
  end
  -- Waiting after an attempt (a job queued again by hand, say): counted as retrying.
  if tonumber(attempts) > 0 then redis.call('SADD', qkey('retry', q), id) end
  place(now, q, priority_of(x), at, id)
end

-- The parent left the queue: each job waiting for it that waits for nothing
-- else now is placed (ready or due, in id order: generated ids grow with time).
local function release_children(now, parent)
  local key = children_key(parent)
  local kids = redis.call('SMEMBERS', key)
  redis.call('DEL', key)
  table.sort(kids)
  for _, child in ipairs(kids) do
    -- A child cancelled (or cleared) meanwhile has no blocker count left.
    if redis.call('HEXISTS', BLOCKERS, child) == 1 and redis.call('HINCRBY', BLOCKERS, child, -1) <= 0 then
      redis.call('HDEL', BLOCKERS, child)
      local x = decode(redis.call('HGET', EXTRA, child)) or {}
      local q = queue_of(x)
      redis.call('SREM', qkey('waiting', q), child)
      local at = x.at or now
      x.b, x.at = nil, nil
      if next(x) ~= nil then
        redis.call('HSET', EXTRA, child, cjson.encode(x))
      else
        redis.call('HDEL', EXTRA, child)
      end
      place(now, q, priority_of(x), at, child)
    end
  end
end

-- Jobs leaving the queue for good (outcome stored, acknowledged, cancelled,
-- cleared): every trace goes, with their cancel requests and unique keys, and
-- the jobs that waited only for them are released, all in the calling script.
-- `claimed`: they are all claimed (only their lease set holds them).
local function leave(ids, claimed)
  if #ids == 0 then return end
  local extras = hmget(EXTRA, ids)
  local by_queue, special = {}, {}
  for k, id in ipairs(ids) do
    local x = decode(extras[k])
    push(by_queue, queue_of(x), id)
    if x then special[#special + 1] = {id, x} end
  end
  for q, list in pairs(by_queue) do
    many('ZREM', qkey('leases', q), list)
    if not claimed then
      many('ZREM', qkey('ready', q), list)
      many('ZREM', qkey('due', q), list)
      many('SREM', qkey('waiting', q), list)
      many('SREM', qkey('retry', q), list)
    end
  end
  many('HDEL', PAYLOAD, ids)
  many('HDEL', ATTEMPTS, ids)
  many('HDEL', TIMEOUT, ids)
  many('HDEL', TOKEN, ids)
  many('HDEL', STARTED, ids)
  many('SREM', CANCEL, ids)
  if #special == 0 then return end
  -- First every leaving job lets go of its key and its parents, then children
  -- are released: a child leaving in the same call is not released.
  local gone = {}
  for _, e in ipairs(special) do
    local id, x = e[1], e[2]
    gone[#gone + 1] = id
    if x.u and redis.call('HGET', UNIQUE, x.u) == id then
      redis.call('HDEL', UNIQUE, x.u)
    end
    if x.b and redis.call('HDEL', BLOCKERS, id) == 1 then
      for _, parent in ipairs(x.b) do redis.call('SREM', children_key(parent), id) end
    end
  end
  many('HDEL', EXTRA, gone)
  local now = nil
  for _, e in ipairs(special) do
    if e[2].h then
      now = now or server_now()
      release_children(now, e[1])
    end
  end
  flush_places(true)
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

-- Seconds until a job of these queues is due or one of their leases runs out ('' if neither).
local function next_wait(now, queues)
  local nxt = false
  for _, q in ipairs(queues) do
    for _, key in ipairs({qkey('due', q), qkey('leases', q)}) do
      local d = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      if #d > 0 and (not nxt or tonumber(d[2]) < nxt) then nxt = tonumber(d[2]) end
    end
  end
  if not nxt then return '' end
  return tostring(nxt - now)
end
""".replace("@DEFAULT_QUEUE@", DEFAULT_QUEUE)
