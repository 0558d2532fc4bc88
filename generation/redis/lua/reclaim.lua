-- reclaim: jobs of workers that stopped heart-beating go back to the queue.
-- ARGV[4] reaper (a consumer name), [5] min idle (ms), [6] attempts (JAMGEN_JOB_ATTEMPTS),
-- [7] forget consumers with nothing pending that are idle this long (ms; negative: never).
-- Every entry idle at least min idle is claimed (XAUTOCLAIM) and settled; its job, if that entry
-- is still its current run, goes back to the front of its owner's lane, its owner to the front of
-- the rotation, with attempt + 1. The last attempt (attempt == attempts, with attempts > 1) is marked `alone`;
-- past it the job is dead-lettered: failed, on the dead stream, with a failed event.
-- Entries are handled newest first, so that jobs put back keep the order they were taken in.
-- A consumer is forgotten only with nothing pending. Answers {requeued, alone, dead, forgotten}.
local reaper, min_idle, attempts, forget = ARGV[4], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
if redis.call('EXISTS', RUN) == 0 then return {{}, {}, {}, {}} end

local claimed = {}
local cursor = '0-0'
repeat
  local reply = redis.call('XAUTOCLAIM', RUN, GROUP, reaper, min_idle, cursor, 'COUNT', 100)
  cursor = reply[1]
  for _, entry in ipairs(reply[2]) do
    if entry then claimed[#claimed + 1] = entry end
  end
until cursor == '0-0'

local function dead_letter(job, id, attempt)
  local times = attempt == 1 and 'once' or (attempt .. ' times')
  local reason = 'The worker stopped ' .. times .. ' while making this track, so it was dropped. Try another prompt.'
  local worker = redis.call('HGET', job, 'worker') or ''
  redis.call('XADD', DEAD, '*', 'job', id, 'attempts', attempt, 'worker', worker, 'reason', reason)
  end_job(job, id, 'failed', 'failed', reason)
end

local requeued, alone, dead = {}, {}, {}
for i = #claimed, 1, -1 do
  local entry = claimed[i][1]
  local id = field(claimed[i][2], 'job')
  settle(entry)
  local job = job_key(id)
  local f = redis.call('HMGET', job, 'state', 'entry', 'attempt')
  if f[1] == 'running' and f[2] == entry then
    local attempt = tonumber(f[3]) + 1
    if attempt > attempts then
      dead_letter(job, id, attempt - 1)
      table.insert(dead, 1, id)
    else
      redis.call('HSET', job, 'attempt', attempt)
      if attempt == attempts and attempts > 1 then
        redis.call('HSET', job, 'alone', 1)
        table.insert(alone, 1, id)
      end
      requeue_front(job, id)
      table.insert(requeued, 1, id)
    end
  end
end

local forgotten = {}
if forget >= 0 then
  for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', RUN, GROUP)) do
    local name = field(consumer, 'name')
    if field(consumer, 'pending') == 0 and field(consumer, 'idle') >= forget then
      redis.call('XGROUP', 'DELCONSUMER', RUN, GROUP, name)
      forgotten[#forgotten + 1] = name
    end
  end
end
return {requeued, alone, dead, forgotten}
