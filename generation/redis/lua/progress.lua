-- progress: the latest snapshot of a held job (latest wins), and a PUBLISH of it (lossy).
-- ARGV[4] consumer, [5] job id, [6] entry id, [7] attempt, [8] steps done, [9] steps in all.
-- Answers 1, or 0 when `me` lost the job.
local id = ARGV[5]
local job = leased(id, ARGV[6], ARGV[4], ARGV[7])
if not job then return 0 end
local done, total = tonumber(ARGV[8]), tonumber(ARGV[9])
redis.call('HSET', job, 'progress_done', done, 'progress_total', total, 'progress_at', stamp())
redis.call('PUBLISH', P .. 'progress:' .. id,
  cjson.encode({job = id, attempt = tonumber(ARGV[7]), done = done, total = total}))
return 1
