-- One scope's spend counters, for display: counting starts if it had not.
-- KEYS: the scope's hash and reservation set.  ARGV: now_us, now_ns, first day (-1: ever;
-- -2: reservations only).
-- Reply: {now_us, now_ns, counting-since µs, baseline field ('' : none needed), baseline value or nil,
--         open reservations, settled values...}
local now_us, now_ns = clock_now(ARGV[1], ARGV[2])
local hash, set = KEYS[1], KEYS[2]
local first = tonumber(ARGV[3])
start_counting(hash, now_us)
expire_reservations(hash, set, now_us)
local since = tonumber(redis.call('HGET', hash, 'c'))
local field = first ~= -2 and baseline_field(since, first)
local base = false
if field then base = redis.call('HGET', hash, field) end
local reply = {fmt(now_us), now_ns, fmt(since), field or '', base, redis.call('HGET', hash, 'r') or '0'}
if first ~= -2 then
  for _, value in ipairs(own_spend(hash, first, math.floor(now_us / DAY_US))) do
    reply[#reply + 1] = value
  end
end
return reply
