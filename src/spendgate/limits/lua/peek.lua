-- Each rate rule's used units now, changing nothing.
-- KEYS: one state key per rule.  ARGV: now_us, now_ns, then per rule: limit, unit exponent.
local now_us, now_ns = clock_now(ARGV[1], ARGV[2])
local used = {}
for i = 1, #KEYS do
  local limit, exp = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  used[i] = used_now(redis.call('GET', KEYS[i]), limit, exp, now_us, now_ns)
end
return used
