-- heartbeat: worker `me` still holds these run entries. ARGV[4] consumer, ARGV[5...] entry ids.
-- For each entry still in `me`'s pending list, XCLAIM ... JUSTID to `me` itself: its idle time
-- restarts and its delivery count does not grow. Answers the entries `me` no longer holds.
local me = ARGV[4]
local lost = {}
for i = 5, #ARGV do
  local entry = ARGV[i]
  local pending = redis.call('XPENDING', RUN, GROUP, entry, entry, 1)
  if #pending > 0 and pending[1][2] == me then
    redis.call('XCLAIM', RUN, GROUP, me, 0, entry, 'JUSTID')
  else
    lost[#lost + 1] = entry
  end
end
return lost
