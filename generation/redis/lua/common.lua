-- Prepended to every script. ARGV[1]: the key prefix; ARGV[2]: how long (ms) an ended job's
-- record and result are kept; ARGV[3]: the events stream's approximate maximum length.
-- Each script's own arguments start at ARGV[4]. Key names match generation/redis/keys.py.
local P = ARGV[1]
local KEEP_MS = ARGV[2]
local EVENTS_MAXLEN = ARGV[3]
local RUN, GROUP = P .. 'run', 'workers'
local EVENTS, DEAD = P .. 'events', P .. 'dead'
local QUEUED, SEQ = P .. 'queued', P .. 'seq'

local function job_key(id) return P .. 'job:' .. id end
local function ready_key(mtag) return P .. 'ready:' .. mtag end
local function lane_key(mtag, member) return P .. 'lane:' .. mtag .. ':' .. member end
local function active_key(akey) return P .. 'active:' .. akey end

local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function stamp() return string.format('%.6f', now()) end

-- the value after `name` in a flat reply (XINFO, a stream entry's fields)
local function field(flat, name)
  for i = 1, #flat, 2 do
    if flat[i] == name then return flat[i + 1] end
  end
  return nil
end

-- an owner to the back of its model's rotation
local function to_back(mtag, member)
  redis.call('ZADD', ready_key(mtag), redis.call('INCR', SEQ), member)
end

-- an owner to the front of its model's rotation (ahead of everyone, whether it was in it or not)
local function to_front(mtag, member)
  local ready = ready_key(mtag)
  local head = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
  local score = head[2] and (tonumber(head[2]) - 1) or redis.call('INCR', SEQ)
  redis.call('ZADD', ready, score, member)
end

-- tell the workers listening that jobs of a model are waiting (pub/sub: lossy; workers also poll)
local function wake(mtag)
  redis.call('PUBLISH', P .. 'wake:' .. mtag, 1)
end

-- a started job back where it started: the front of its owner's lane, its owner at the front of
-- the rotation (it had its turn already), waiting again
local function requeue_front(job, id)
  local f = redis.call('HMGET', job, 'mtag', 'member')
  redis.call('LPUSH', lane_key(f[1], f[2]), id)
  to_front(f[1], f[2])
  redis.call('HSET', job, 'state', 'queued')
  redis.call('HDEL', job, 'worker', 'entry')
  redis.call('INCR', QUEUED)
  wake(f[1])
end

-- a run stream entry is done with: out of the pending list and the stream
local function settle(entry)
  redis.call('XACK', RUN, GROUP, entry)
  redis.call('XDEL', RUN, entry)
end

-- a job's part of its owner's active count goes back: 1, or, for jobs admitted together under one
-- charge (a `group`), the whole charge once the last of them ends
local function release_active(job)
  local f = redis.call('HMGET', job, 'akey', 'group', 'charge')
  local key, charge = active_key(f[1]), 1
  if f[2] then
    if redis.call('INCR', f[2]) < 0 then return end -- the group counts up from -n to 0
    redis.call('DEL', f[2])
    charge = tonumber(f[3])
  end
  if redis.call('DECRBY', key, charge) <= 0 then redis.call('DEL', key) end
end

-- a job's end on the stream its admitter reads: the hash's `notify` (a bot's own stream), else `events`
local function event(id, kind, reason)
  local stream = redis.call('HGET', job_key(id), 'notify') or EVENTS
  local args = {'XADD', stream, 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'job', id, 'kind', kind}
  if reason then
    table.insert(args, 'reason')
    table.insert(args, reason)
  end
  return redis.call(unpack(args))
end

-- a job ends: its state, its owner's active count released, an event; the record is kept KEEP_MS
local function end_job(job, id, state, kind, reason)
  redis.call('HSET', job, 'state', state, 'ended', stamp())
  if reason then redis.call('HSET', job, 'reason', reason) end
  redis.call('HDEL', job, 'entry')
  release_active(job)
  event(id, kind, reason)
  redis.call('PEXPIRE', job, KEEP_MS)
end

-- the fence: `entry` is in `me`'s pending list and is this job's current run, `attempt`
-- (a string) its current attempt. Returns the job's key, or nil if `me` lost the job.
local function leased(id, entry, me, attempt)
  local job = job_key(id)
  local f = redis.call('HMGET', job, 'state', 'entry', 'attempt', 'worker')
  if f[1] ~= 'running' or f[2] ~= entry or f[3] ~= attempt or f[4] ~= me then return nil end
  local pending = redis.call('XPENDING', RUN, GROUP, entry, entry, 1)
  if #pending == 0 or pending[1][2] ~= me then return nil end
  return job
end
