-- admit: check and charge one user's limits, then queue their jobs; all or nothing.
-- ARGV[4] admission key, [5] exempt ('1'/'0'), [6] max_active, [7] rate_count, [8] rate_window (s),
-- [9] queue_cap, [10] float slack (s), [11] the stream told when the jobs end (kept as `notify`; '' for
-- `events`), [12] c, the charge: what the n jobs count together against max_active (n, or 1 for a request
-- of several takes), [13] tokens, what they take from the rate (c, or more for a long track), [14] n, then
-- n times: job id, model, model tag, member, request, meta (the client's own record of the job, kept in
-- the hash as `meta`; '' for none).
-- The checks, in generation.admission.Admission's order (the first that fails answers):
--   active      a user's charges queued or running + c > max_active       -> {'active', active}
--   rate        GCRA, the token bucket of rate_count per rate_window:
--               tokens > rate_count                                       -> {'rate', ''}
--               seconds until `tokens` are there > slack                  -> {'rate', wait}
--   queue_full  waiting jobs, all users + n > queue_cap                   -> {'queue_full', waiting}
-- Exempt keys skip the first two and are not charged tokens. Answers {'ok'}, or
-- {'duplicate', id} when a job id is taken. Times are the server's clock (TIME).
-- The charge against max_active is given back when the last of the n jobs ends (see release_active).
local akey, exempt = ARGV[4], ARGV[5] == '1'
local max_active, rate_count, window = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local cap, slack, notify = tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11]
local c, tokens, n = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])

local jobs = {}
for i = 0, n - 1 do
  local b = 15 + i * 6
  local job = {id = ARGV[b], model = ARGV[b + 1], mtag = ARGV[b + 2], member = ARGV[b + 3], request = ARGV[b + 4],
    meta = ARGV[b + 5]}
  if redis.call('EXISTS', job_key(job.id)) == 1 then return {'duplicate', job.id} end
  jobs[#jobs + 1] = job
end

local t = now()
local active = tonumber(redis.call('GET', active_key(akey)) or '0')
local rate = P .. 'rate:' .. akey
-- the GCRA's theoretical arrival time: when the bucket is full again (as Admission's full_at)
local full_at = tonumber(redis.call('GET', rate) or '0')
if not exempt then
  if active + c > max_active then return {'active', tostring(active)} end
  if tokens > rate_count then return {'rate', ''} end
  local wait = math.max(0, full_at - t) - (rate_count - tokens) * window / rate_count
  if wait > slack then return {'rate', string.format('%.17g', wait)} end
end
local waiting = tonumber(redis.call('GET', QUEUED) or '0')
if waiting + n > cap then return {'queue_full', tostring(waiting)} end

if not exempt then
  full_at = math.max(full_at, t) + tokens * window / rate_count
  local ttl = math.ceil((full_at - t) * 1000) + 1 -- a full bucket is a missing one
  redis.call('SET', rate, string.format('%.17g', full_at), 'PX', ttl)
end
redis.call('INCRBY', active_key(akey), c)
local group = P .. 'group:' .. jobs[1].id -- the jobs that share the charge: it goes back with the last
if n > 1 or c ~= 1 then redis.call('SET', group, -n) end
redis.call('INCRBY', QUEUED, n)
local created = string.format('%.6f', t)
for _, job in ipairs(jobs) do
  redis.call('HSET', job_key(job.id), 'request', job.request, 'model', job.model, 'mtag', job.mtag,
    'member', job.member, 'akey', akey, 'state', 'queued', 'attempt', 1, 'created', created)
  if job.meta ~= '' then redis.call('HSET', job_key(job.id), 'meta', job.meta) end
  if notify ~= '' then redis.call('HSET', job_key(job.id), 'notify', notify) end
  if n > 1 or c ~= 1 then redis.call('HSET', job_key(job.id), 'group', group, 'charge', c) end
  redis.call('RPUSH', lane_key(job.mtag, job.member), job.id)
  if not redis.call('ZSCORE', ready_key(job.mtag), job.member) then to_back(job.mtag, job.member) end
  redis.call('ZADD', P .. 'models', 'NX', 0, job.model) -- known to readers before a worker serves it
end
for _, job in ipairs(jobs) do wake(job.mtag) end
return {'ok'}
