-- take: up to n waiting jobs of one model for worker `me`, in round-robin order across owners.
-- ARGV[4] consumer, [5] model tag, [6] n (free rows).
-- Each pick pops the head of the lowest-scored owner's lane; the owner goes to the back of the
-- rotation if it has jobs left, else leaves it. The jobs are appended to the run stream and read
-- into `me`'s pending list here (XREADGROUP without BLOCK), so they are held from this moment.
-- An `alone` job (its last attempt) runs by itself: it is taken only as the one job of a take by
-- a worker holding nothing; at the head of the rotation otherwise it ends the take (it is not
-- skipped, so it starts as soon as a worker is idle), and a worker holding it takes nothing more.
-- Answers {job id, entry id, attempt, request, alone (0/1)} per job, in start order.
local me, mtag, n = ARGV[4], ARGV[5], tonumber(ARGV[6])

local function ensure_group()
  if redis.call('EXISTS', RUN) == 0 then
    redis.call('XGROUP', 'CREATE', RUN, GROUP, '0', 'MKSTREAM')
    return
  end
  local delivered = nil
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', RUN)) do
    if field(group, 'name') == GROUP then delivered = field(group, 'last-delivered-id') end
  end
  if not delivered then
    redis.call('XGROUP', 'CREATE', RUN, GROUP, '0')
    delivered = '0-0'
  end
  -- every entry is read by the take that adds it: one nobody read would go to this worker
  if #redis.call('XRANGE', RUN, '(' .. delivered, '+', 'COUNT', 1) > 0 then
    error({err = 'ERR jamgen: the run stream has entries no worker was given; refusing to take'})
  end
end

-- the jobs `me` holds
local function held_jobs()
  local jobs = {}
  for _, pending in ipairs(redis.call('XPENDING', RUN, GROUP, '-', '+', 100000, me)) do
    local entry = redis.call('XRANGE', RUN, pending[1], pending[1])[1]
    if entry then jobs[#jobs + 1] = job_key(field(entry[2], 'job')) end
  end
  return jobs
end

if n < 1 then return {} end
ensure_group()
local held = held_jobs()
for _, job in ipairs(held) do
  if redis.call('HGET', job, 'alone') == '1' then return {} end
end

local ready = ready_key(mtag)
local chosen = {}
while #chosen < n do
  local member = redis.call('ZRANGE', ready, 0, 0)[1]
  if not member then break end
  local lane = lane_key(mtag, member)
  local id = redis.call('LINDEX', lane, 0)
  if not id then
    redis.call('ZREM', ready, member) -- an empty lane has no turn (not expected)
  else
    local alone = redis.call('HGET', job_key(id), 'alone') == '1'
    if alone and (#chosen > 0 or #held > 0) then break end
    redis.call('LPOP', lane)
    if redis.call('LLEN', lane) > 0 then to_back(mtag, member) else redis.call('ZREM', ready, member) end
    chosen[#chosen + 1] = id
    if alone then break end
  end
end
if #chosen == 0 then return {} end

redis.call('DECRBY', QUEUED, #chosen)
local entries = {}
for i, id in ipairs(chosen) do entries[i] = redis.call('XADD', RUN, '*', 'job', id) end
local read = redis.call('XREADGROUP', 'GROUP', GROUP, me, 'COUNT', #chosen, 'STREAMS', RUN, '>')[1][2]
local started = stamp()
local out = {}
for i, id in ipairs(chosen) do
  if read[i][1] ~= entries[i] then error({err = 'ERR jamgen: read ' .. read[i][1] .. ', not ' .. entries[i]}) end
  local job = job_key(id)
  redis.call('HSET', job, 'state', 'running', 'worker', me, 'entry', entries[i], 'started', started)
  local f = redis.call('HMGET', job, 'attempt', 'request', 'alone')
  out[i] = {id, entries[i], tonumber(f[1]), f[2], f[3] == '1' and 1 or 0}
end
return out
