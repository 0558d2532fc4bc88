-- positions: the lanes of one model's owners, in rotation order (read only).
-- ARGV[4] model tag. Answers {{job id, ...}, ...}; the start order is their round robin.
local lanes = {}
for i, member in ipairs(redis.call('ZRANGE', ready_key(ARGV[4]), 0, -1)) do
  lanes[i] = redis.call('LRANGE', lane_key(ARGV[4], member), 0, -1)
end
return lanes
