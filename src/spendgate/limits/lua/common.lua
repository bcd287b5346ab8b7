-- Shared by every script (prepended to each). Lua numbers are doubles: every integer kept
-- here stays below 2^53, and numbers are written back with %.0f, never tostring (which
-- rounds to 14 digits).
local DAY_US = 86400000000
local KEEP_DAYS = 40

local function fmt(n) return string.format('%.0f', n) end

-- The space-separated words of one argument (rule parameters travel as one string each).
local function words(blob)
  local list = {}
  for word in string.gmatch(blob, '%S+') do list[#list + 1] = word end
  return list
end

-- Now as (microseconds since the epoch, nanoseconds within the microsecond).
local function clock_now(us, ns)
  if us == '' then
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000000 + tonumber(t[2]), 0
  end
  return tonumber(us), tonumber(ns)
end

-- Whole time units elapsed between two instants; a unit is 1000^exp nanoseconds.
local function elapsed(exp, now_us, now_ns, at_us, at_ns)
  if exp == 0 then return (now_us - at_us) * 1000 + (now_ns - at_ns) end
  local per = 1000 ^ (exp - 1)
  return math.floor(now_us / per) - math.floor(at_us / per)
end

-- A GCRA state is 'limit exp used at_us at_ns': `used` scaled units of the bucket were in
-- use at that instant (the TAT minus then, times the limit). A different limit or unit
-- starts from a full bucket.
local function used_now(state, limit, exp, now_us, now_ns)
  if not state then return 0 end
  local l, e, u, at_us, at_ns = string.match(state, '^(%d+) (%d+) (%d+) (%d+) (%d+)$')
  if tonumber(l) ~= limit or tonumber(e) ~= exp then return 0 end
  local left = tonumber(u) - elapsed(exp, now_us, now_ns, tonumber(at_us), tonumber(at_ns)) * limit
  if left < 0 then return 0 end
  return left
end

-- Store a state; it expires once the bucket is full again (plus a second).
local function save_state(key, limit, exp, used, now_us, now_ns)
  if limit == 0 then return end
  local unit_ms = 1000 ^ exp / 1000000
  local ttl_ms = math.ceil(used / limit * unit_ms) + 1000
  redis.call('SET', key, fmt(limit) .. ' ' .. exp .. ' ' .. fmt(used) .. ' ' .. fmt(now_us) .. ' ' .. now_ns,
    'PX', fmt(ttl_ms))
end

-- A scope's hash counts settled spend from field `c` (µs) on; the ledger holds the rest.
local function start_counting(hash, now_us)
  redis.call('HSETNX', hash, 'c', fmt(now_us))
end

-- Drop reservations past their deadline from the set and from the running sum `r`.
local function expire_reservations(hash, set, now_us)
  local gone = redis.call('ZRANGEBYSCORE', set, '-inf', fmt(now_us))
  if #gone == 0 then return end
  for _, member in ipairs(gone) do
    redis.call('HINCRBY', hash, 'r', '-' .. string.match(member, ':(%d+)$'))
  end
  redis.call('ZREMRANGEBYSCORE', set, '-inf', fmt(now_us))
end

-- The field holding the ledger's spend before counting began, from day `first` (-1: ever);
-- nil when that period began after counting did (the ledger holds nothing of it).
local function baseline_field(since_us, first)
  if first < 0 then return 'b:all' end
  if first > math.floor(since_us / DAY_US) then return nil end
  return 'b:' .. first
end

-- The settled spend fields counted from day `first` (-1: the running total) to `today`.
local function own_spend(hash, first, today)
  if first < 0 then return {redis.call('HGET', hash, 't')} end
  if first > today then return {} end
  local fields = {}
  for d = first, today do fields[#fields + 1] = 'd:' .. d end
  return redis.call('HMGET', hash, unpack(fields))
end

-- int64 money as {high, low} with low below 10^9, so sums stay exact as doubles.
local BIG = 1000000000
local function big_zero() return {0, 0} end
local function big_add(acc, s)
  if not s then return end
  local n = #s
  if string.sub(s, 1, 1) == '-' or n <= 15 then  -- negatives only ever small (a debt)
    acc[2] = acc[2] + tonumber(s)
  else
    acc[1] = acc[1] + tonumber(string.sub(s, 1, n - 9))
    acc[2] = acc[2] + tonumber(string.sub(s, n - 8))
  end
end
local function big_add_all(acc, values)
  for i = 1, #values do
    if values[i] then big_add(acc, values[i]) end
  end
end
local function big_norm(acc)
  local carry = math.floor(acc[2] / BIG)
  return acc[1] + carry, acc[2] - carry * BIG
end
-- Whether the sum is below the decimal string `cap`.
local function big_below(acc, cap)
  local c = big_zero()
  big_add(c, cap)
  local ah, al = big_norm(acc)
  local ch, cl = big_norm(c)
  return ah < ch or (ah == ch and al < cl)
end
