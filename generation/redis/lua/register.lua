-- register: a worker is alive (generation/redis/registry.py; standalone: no common prelude).
-- KEYS[1] its hash (worker:{name}), KEYS[2] the workers zset, KEYS[3] the models zset.
-- ARGV[1] the hash's lifetime (ms), ARGV[2] the worker's name, ARGV[3] its model, ARGV[4...] field,
-- value pairs. The hash is replaced whole, so a field not sent (a speed not measured yet) is absent.
-- `seen` is the server's time: the same clock for every host.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'seen', string.format('%.6f', now), unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('ZADD', KEYS[3], now, ARGV[3])
return 1
