-- remove: a waiting job is cancelled. ARGV[4] job id, [5] reason.
-- Its owner keeps their place in the rotation if they still have jobs waiting, else leaves it.
-- Answers 1, or 0 if the job is not waiting.
local id = ARGV[4]
local job = job_key(id)
local f = redis.call('HMGET', job, 'state', 'mtag', 'member')
if f[1] ~= 'queued' then return 0 end
local lane = lane_key(f[2], f[3])
if redis.call('LREM', lane, 1, id) == 0 then return 0 end
if redis.call('LLEN', lane) == 0 then redis.call('ZREM', ready_key(f[2]), f[3]) end
redis.call('DECR', QUEUED)
end_job(job, id, 'cancelled', 'cancelled', ARGV[5])
return 1
