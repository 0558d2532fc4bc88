-- fail: the job itself failed (not the worker) while `me` held it.
-- ARGV[4] consumer, [5] job id, [6] entry id, [7] attempt, [8] reason. Answers 1, or 0 when `me` lost it.
local id, entry = ARGV[5], ARGV[6]
local job = leased(id, entry, ARGV[4], ARGV[7])
if not job then return 0 end
settle(entry)
end_job(job, id, 'failed', 'failed', ARGV[8])
return 1
