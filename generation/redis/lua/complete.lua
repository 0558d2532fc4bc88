-- complete: worker `me` finished a job it still holds (see `leased`); the result is stored.
-- ARGV[4] consumer, [5] job id, [6] entry id, [7] attempt, [8] result bytes.
-- Answers 1, or 0 when `me` lost the job (it must not publish anything).
local id, entry = ARGV[5], ARGV[6]
local job = leased(id, entry, ARGV[4], ARGV[7])
if not job then return 0 end
settle(entry)
redis.call('SET', P .. 'result:' .. id, ARGV[8], 'PX', KEEP_MS)
end_job(job, id, 'done', 'finished', nil)
return 1
