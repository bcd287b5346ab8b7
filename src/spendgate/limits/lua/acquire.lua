-- Admission: check every rate rule and spend rule of one request, take all or nothing.
-- Numbers are Lua doubles, exact below 2^53: the caller picks each rule's time unit so that
-- limit * period fits; money (int64 picodollars) is summed in two parts, see big.lua.
--
-- KEYS: [1] reservation id counter, then one state key per rate rule, then per spend scope
--       its hash and its reservation set.
-- ARGV: now_us, now_ns (sub-microsecond; "" = the server's TIME), #rates, #scopes, #spends,
--       reserve (pico), ttl_us, then two strings of space-separated words: per rate: limit,
--       unit exponent, period, is_request; per spend: scope index, first day number
--       (-1: all time), cap (pico).
-- Reply: {status, detail, now_us, now_ns, ...}
--   1 granted        detail = reservation id (0: none); then each rate's used-before-take
--   0 rate refused   then each rate's used-now
--   2 need baselines then (scope index, counting-since µs, first day) per missing baseline
--   3 spend refused  detail = the spend rule's index
local now_us, now_ns = clock_now(ARGV[1], ARGV[2])
local nrates, nscopes, nspends = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local reserve, ttl_us = ARGV[6], tonumber(ARGV[7])
local R, S = words(ARGV[8]), words(ARGV[9])

local used = {}
local refused = false
for i = 1, nrates do
  local a = 4 * i - 3
  local limit, exp, period = tonumber(R[a]), tonumber(R[a + 1]), tonumber(R[a + 2])
  local u = used_now(redis.call('GET', KEYS[1 + i]), limit, exp, now_us, now_ns)
  used[i] = u
  if limit == 0 or u + period > limit * period then refused = true end
end
if refused then return {0, 0, now_us, now_ns, unpack(used)} end

local scope_key = 1 + nrates
local day = math.floor(now_us / DAY_US)
local missing = {}
local sums = {}
for s = 1, nscopes do
  local hash, set = KEYS[scope_key + 2 * s - 1], KEYS[scope_key + 2 * s]
  start_counting(hash, now_us)
  expire_reservations(hash, set, now_us)
end
for i = 1, nspends do
  local a = 3 * i - 2
  local s, first = tonumber(S[a]), tonumber(S[a + 1])
  local hash = KEYS[scope_key + 2 * s - 1]
  local since = tonumber(redis.call('HGET', hash, 'c'))
  local base = baseline_field(since, first)
  local total = big_zero()
  if base then
    local value = redis.call('HGET', hash, base)
    if not value then
      missing[#missing + 1] = s
      missing[#missing + 1] = since
      missing[#missing + 1] = first
    else
      big_add(total, value)
    end
  end
  big_add(total, redis.call('HGET', hash, 'r'))
  big_add_all(total, own_spend(hash, first, day))
  sums[i] = total
end
if #missing > 0 then return {2, 0, now_us, now_ns, unpack(missing)} end
for i = 1, nspends do
  if not big_below(sums[i], S[3 * i]) then
    return {3, i, now_us, now_ns}
  end
end

for i = 1, nrates do
  local a = 4 * i - 3
  if R[a + 3] == '1' then
    local limit, exp, period = tonumber(R[a]), tonumber(R[a + 1]), tonumber(R[a + 2])
    save_state(KEYS[1 + i], limit, exp, used[i] + period, now_us, now_ns)
  end
end
local rid = 0
if nspends > 0 and reserve ~= '0' then
  rid = redis.call('INCR', KEYS[1])
  local member = rid .. ':' .. reserve
  for s = 1, nscopes do
    local hash, set = KEYS[scope_key + 2 * s - 1], KEYS[scope_key + 2 * s]
    redis.call('ZADD', set, fmt(now_us + ttl_us), member)
    redis.call('HINCRBY', hash, 'r', reserve)
  end
end
return {1, rid, now_us, now_ns, unpack(used)}
