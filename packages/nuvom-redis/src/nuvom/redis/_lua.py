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

__all__ = ["BASE", "COMMON", "LEASES", "LEAVING", "PLACE_NEW", "PLACING", "extras_of"]


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


# Every script runs its preamble on every call (Redis keeps no Lua state between
# calls, and each function defined is a closure built again): a script takes
# only the parts it uses, and what only workflows, unique keys and renumbering
# need is defined inside the branches that use it.
#: Key names, the clock, batched commands, wake-ups.
BASE = """
local P = ARGV[1]
local PAYLOAD, ATTEMPTS, TIMEOUT, TOKEN = P .. ':q:payload', P .. ':q:attempts', P .. ':q:timeout', P .. ':q:token'
-- Claims that started (BaseJobQueue.mark_started): only those count as attempts.
local SEQ, STARTED = P .. ':q:seq', P .. ':q:started'
-- id -> what a job uses beyond the default queue at priority 0 (JSON: q queue,
-- p priority, u unique key, b parents it waits for, at its due time, h has children).
local EXTRA, CANCEL = P .. ':q:x', P .. ':q:cancel'
local DEFAULT_Q = '@DEFAULT_QUEUE@'
-- Ready scores: arrival - priority * SPAN. Priorities are within +-10^6 (TaskOptions),
-- so scores stay integers a double holds exactly while arrivals stay below SPAN.
local SPAN = 8589934592
-- Batches: one command for many jobs, not one per job (a redis.call costs
-- more than the work it does on a small job; measured in docs/redis.md). Lua
-- unpacks at most ~8000 values, so long lists go in slices of CHUNK.
local CHUNK = 1000

-- The default queue keeps the key names of releases without named queues
-- (<prefix>:q:due, :q:leases, :q:wake), so what they queued is still claimed.
local function qkey(kind, q)
  if q == DEFAULT_Q then return P .. ':q:' .. kind end
  return P .. ':q:' .. kind .. ':' .. q
end

local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

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

-- One wake-up at a time per queue is enough: a worker that claims and sees more
-- work ready wakes the next one (see CLAIM), so idle workers join in a chain.
local function wake_one(q)
  local key = qkey('wake', q)
  if redis.call('LLEN', key) == 0 then
    redis.call('RPUSH', key, 1)
  end
end
""".replace("@DEFAULT_QUEUE@", DEFAULT_QUEUE)

#: Where jobs wait (needs BASE).
PLACING = """
-- Placements of a script, written at its end in one command per key: jobs due
-- now go to their queue's ready set in the order placed, later ones to its due
-- set. Flat lists of (queue, priority, id) and (queue, due time, id), made on
-- first use: a script that places nothing builds no table for it.
local ready_list, due_list = false, false

local function place(now, q, priority, at, id)
  local list
  if at > now then
    due_list = due_list or {}
    list, priority = due_list, at
  else
    ready_list = ready_list or {}
    list = ready_list
  end
  local n = #list
  list[n + 1], list[n + 2], list[n + 3] = q, priority, id
end

-- Scores are passed as Lua numbers: Redis converts them with every digit
-- (integers below 2^53 exactly), where tostring() would keep 14.
local function flush_places(wake)
  if not ready_list and not due_list then return end
  local sets, woken = {}, {}
  if ready_list then
    local count = #ready_list / 3
    local order = P .. ':q:order'
    local last = redis.call('INCRBY', order, count)
    if last >= SPAN then
      -- Once per SPAN arrivals: every ready set is scored again from 1, in its order.
      local names = redis.call('SMEMBERS', P .. ':q:queues')
      names[#names + 1] = DEFAULT_Q
      local top = 0
      for _, q in ipairs(names) do
        local key = qkey('ready', q)
        local all = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
        local again = {}
        for i = 1, #all, 2 do
          local priority = -math.floor(tonumber(all[i + 1]) / SPAN)
          again[#again + 1] = (i + 1) / 2 - priority * SPAN
          again[#again + 1] = all[i]
        end
        many('ZADD', key, again)
        top = math.max(top, #all / 2)
      end
      redis.call('SET', order, top)
      last = redis.call('INCRBY', order, count)
    end
    local arrival = last - count
    for i = 1, #ready_list, 3 do
      local key = qkey('ready', ready_list[i])
      local list = sets[key]
      if not list then
        list = {}
        sets[key] = list
        woken[ready_list[i]] = true
      end
      arrival = arrival + 1
      list[#list + 1] = arrival - ready_list[i + 1] * SPAN
      list[#list + 1] = ready_list[i + 2]
    end
  end
  if due_list then
    for i = 1, #due_list, 3 do
      local key = qkey('due', due_list[i])
      local list = sets[key]
      if not list then
        list = {}
        sets[key] = list
        woken[due_list[i]] = true
      end
      list[#list + 1] = due_list[i + 1]
      list[#list + 1] = due_list[i + 2]
    end
  end
  for key, list in pairs(sets) do many('ZADD', key, list) end
  if wake then
    for q in pairs(woken) do wake_one(q) end
  end
  ready_list, due_list = false, false
end
"""

#: A new job's place (needs PLACING).
PLACE_NEW = """
-- A job just stored (payload, attempts, timeout): where it waits. `ex` is ''
-- for a job of the default queue at priority 0 with no unique key nor parents,
-- else JSON (q, p, u, pa: its parents). Only parents still in the queue (their
-- payload is here) hold it back; a job with none is placed at once.
local function place_new(now, id, offset, ex, attempts)
  local at, x, q = now + tonumber(offset), nil, DEFAULT_Q
  if ex ~= '' then
    x = cjson.decode(ex)
    q = x.q or DEFAULT_Q
    if q ~= DEFAULT_Q then redis.call('SADD', P .. ':q:queues', q) end
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
        redis.call('HSET', P .. ':q:blockers', id, #blockers)
        redis.call('SADD', qkey('waiting', q), id)
        for _, parent in ipairs(blockers) do
          redis.call('SADD', P .. ':q:children:' .. parent, id)
          -- The parent's entry says it has children (h), for when it leaves.
          local px = redis.call('HGET', EXTRA, parent)
          px = px and cjson.decode(px) or {}
          if not px.h then
            px.h = 1
            redis.call('HSET', EXTRA, parent, cjson.encode(px))
          end
        end
        return
      end
    end
    if next(x) ~= nil then redis.call('HSET', EXTRA, id, cjson.encode(x)) end
  end
  -- Waiting after an attempt (a job queued again by hand, say): counted as retrying.
  if tonumber(attempts) > 0 then redis.call('SADD', qkey('retry', q), id) end
  place(now, q, (x and x.p) or 0, at, id)
end
"""

#: Jobs leaving the queue (needs PLACING).
LEAVING = """
-- Jobs leaving the queue for good (outcome stored, acknowledged, cancelled,
-- cleared): every trace goes, with their cancel requests and unique keys, and
-- the jobs that waited only for them are released, all in the calling script.
-- `claimed`: they are all claimed (only their lease set holds them).
local function leave(ids, claimed)
  if #ids == 0 then return end
  local extras = hmget(EXTRA, ids)
  local plain = true
  for k = 1, #ids do
    if extras[k] then
      plain = false
      break
    end
  end
  if plain and claimed then
    -- Nearly every completion: claimed jobs of the default queue that use nothing more.
    many('ZREM', qkey('leases', DEFAULT_Q), ids)
    many('HDEL', PAYLOAD, ids)
    many('HDEL', ATTEMPTS, ids)
    many('HDEL', TIMEOUT, ids)
    many('HDEL', TOKEN, ids)
    many('HDEL', STARTED, ids)
    many('SREM', CANCEL, ids)
    return
  end
  local by_queue, special = {}, {}
  for k, id in ipairs(ids) do
    local x = extras[k] and cjson.decode(extras[k])
    local q = (x and x.q) or DEFAULT_Q
    local list = by_queue[q]
    if not list then list = {}; by_queue[q] = list end
    list[#list + 1] = id
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
  local UNIQUE, BLOCKERS = P .. ':q:unique', P .. ':q:blockers'
  local gone = {}
  for _, e in ipairs(special) do
    local id, x = e[1], e[2]
    gone[#gone + 1] = id
    if x.u and redis.call('HGET', UNIQUE, x.u) == id then
      redis.call('HDEL', UNIQUE, x.u)
    end
    if x.b and redis.call('HDEL', BLOCKERS, id) == 1 then
      for _, parent in ipairs(x.b) do redis.call('SREM', P .. ':q:children:' .. parent, id) end
    end
  end
  many('HDEL', EXTRA, gone)
  local now = nil
  for _, e in ipairs(special) do
    if e[2].h then
      -- Each job waiting for it that waits for nothing else now is placed (in id
      -- order: generated ids grow with time).
      now = now or server_now()
      local key = P .. ':q:children:' .. e[1]
      local kids = redis.call('SMEMBERS', key)
      redis.call('DEL', key)
      table.sort(kids)
      for _, child in ipairs(kids) do
        -- A child cancelled (or cleared) meanwhile has no blocker count left.
        if redis.call('HEXISTS', BLOCKERS, child) == 1 and redis.call('HINCRBY', BLOCKERS, child, -1) <= 0 then
          redis.call('HDEL', BLOCKERS, child)
          local x = redis.call('HGET', EXTRA, child)
          x = x and cjson.decode(x) or {}
          local q = x.q or DEFAULT_Q
          redis.call('SREM', qkey('waiting', q), child)
          local at = x.at or now
          x.b, x.at = nil, nil
          if next(x) ~= nil then
            redis.call('HSET', EXTRA, child, cjson.encode(x))
          else
            redis.call('HDEL', EXTRA, child)
          end
          place(now, q, x.p or 0, at, child)
        end
      end
    end
  end
  flush_places(true)
end
"""

#: The lease rule and the wait until something is due (needs BASE).
LEASES = """
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
"""

#: Everything (scripts outside the hot path).
COMMON = BASE + PLACING + PLACE_NEW + LEAVING + LEASES
