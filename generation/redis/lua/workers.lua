-- workers: the live workers' hashes (generation/redis/registry.py; standalone: no common prelude).
-- KEYS[1] the workers zset; ARGV[1] the hashes' key prefix (`{prefix}worker:`). A member whose hash
-- has expired (the worker stopped heart-beating) leaves the set here. Answers {{name, {field, value, ...}}, ...}.
local live = {}
for _, name in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local fields = redis.call('HGETALL', ARGV[1] .. name)
  if #fields == 0 then
    redis.call('ZREM', KEYS[1], name)
  else
    live[#live + 1] = {name, fields}
  end
end
return live
