-- release: worker `me` gives back a job it holds, untouched (it is shutting down): the job goes
-- back to the front of its owner's lane with its attempt unchanged.
-- ARGV[4] consumer, [5] job id, [6] entry id, [7] attempt. Answers 1, or 0 when `me` lost it.
local id, entry = ARGV[5], ARGV[6]
local job = leased(id, entry, ARGV[4], ARGV[7])
if not job then return 0 end
settle(entry)
requeue_front(job, id)
return 1
