-- Settlement: drop the request's reservation, charge its tokens, record its cost.
-- KEYS: one state key per token rule, then one hash per costed scope, then per reserved
--       scope its hash and its reservation set.
-- ARGV: now_us, now_ns, #token rules, #costed scopes, #reserved scopes, tokens, cost (pico),
--       reservation member ('' : none), then one string of space-separated words: per
--       token rule: limit, unit exponent, period.
local now_us, now_ns = clock_now(ARGV[1], ARGV[2])
local nrules, ncosted, nreserved = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tokens, cost, member = tonumber(ARGV[6]), ARGV[7], ARGV[8]

if member ~= '' then
  local amount = string.match(member, ':(%d+)$')
  for s = 1, nreserved do
    local hash, set = KEYS[nrules + ncosted + 2 * s - 1], KEYS[nrules + ncosted + 2 * s]
    if redis.call('ZREM', set, member) == 1 then  -- 0: it expired, `r` already lost it
      redis.call('HINCRBY', hash, 'r', '-' .. amount)
    end
  end
end

if tokens > 0 then
  local R = words(ARGV[9])
  for i = 1, nrules do
    local a = 3 * i - 2
    local limit, exp, period = tonumber(R[a]), tonumber(R[a + 1]), tonumber(R[a + 2])
    local used = used_now(redis.call('GET', KEYS[i]), limit, exp, now_us, now_ns)
    save_state(KEYS[i], limit, exp, used + tokens * period, now_us, now_ns)
  end
end

if cost ~= '0' then
  local day = math.floor(now_us / DAY_US)
  for s = 1, ncosted do
    local hash = KEYS[nrules + s]
    local since = tonumber(redis.call('HGET', hash, 'c'))
    if not since then
      -- Never counted here: this request's ledger row, written just before, is part of
      -- the baseline read when the scope is next checked. Count from the next instant.
      redis.call('HSET', hash, 'c', fmt(now_us + 1))
    elseif now_us >= since then
      redis.call('HINCRBY', hash, 't', cost)
      if redis.call('HINCRBY', hash, 'd:' .. day, cost) == tonumber(cost) then
        -- the day's first settlement: forget days no period reaches any more
        for _, field in ipairs(redis.call('HKEYS', hash)) do
          local old = tonumber(string.match(field, '^d:(%d+)$'))
          if old and old < day - KEEP_DAYS then redis.call('HDEL', hash, field) end
        end
      end
    end
  end
end
return 1
