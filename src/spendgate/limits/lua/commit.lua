-- Settlement: drop the request's reservation, charge its tokens, record its cost.
-- KEYS: one state key per token rule, then one hash per costed scope, then per reserved
--       scope its hash and its reservation set.
-- ARGV: now_us, now_ns, #token rules, #costed scopes, #reserved scopes, tokens, cost (pico),
--       the ledger row's timestamp (µs; '' : now), reservation member ('' : none), its
--       deadline (µs), the reservation TTL (µs), then one string of space-separated words:
--       per token rule: limit, unit exponent, period.
-- Reply: 1 applied; 0 applied already by an earlier send (nothing changed).
--
-- The cost counts on a scope only if the row's timestamp is not before the scope began
-- counting (field `c`): the ledger baseline holds the rows stamped before, so every row is
-- counted once, however late its settlement arrives.
--
-- A settlement whose reply was lost is sent again (by the outage guard) and must not count
-- twice. One holding a reservation tells, with no record kept per request: applying it
-- removes its member from every reservation set, and a member leaves a set otherwise only
-- at its deadline (expiry) or with Redis's data. So a member found in no set before its
-- deadline, while every reserved scope has counted since before the reservation was made,
-- means "applied already" (reply 0; so it is for a first try that arrives, delayed in the
-- network, after its own retry). If Redis lost the data since (a scope began counting
-- after the reservation), the settlement applies, and the row's timestamp decides whether
-- its cost is in the new count or in the baseline. Past the deadline a settlement applies
-- (a lost reply can no longer be told apart), and one without a reservation applies every
-- time it is sent.
local now_us, now_ns = clock_now(ARGV[1], ARGV[2])
local nrules, ncosted, nreserved = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tokens, cost = tonumber(ARGV[6]), ARGV[7]
local at = tonumber(ARGV[8]) or now_us
local member = ARGV[9]

if member ~= '' then
  local amount = string.match(member, ':(%d+)$')
  local released = false
  for s = 1, nreserved do
    local hash, set = KEYS[nrules + ncosted + 2 * s - 1], KEYS[nrules + ncosted + 2 * s]
    if redis.call('ZREM', set, member) == 1 then  -- 0: it expired, `r` already lost it
      redis.call('HINCRBY', hash, 'r', '-' .. amount)
      released = true
    end
  end
  local deadline = tonumber(ARGV[10])
  if not released and now_us < deadline then
    local made, kept = deadline - tonumber(ARGV[11]), true
    for s = 1, nreserved do
      local since = tonumber(redis.call('HGET', KEYS[nrules + ncosted + 2 * s - 1], 'c'))
      if not since or since > made then kept = false end
    end
    if kept then return 0 end
  end
end

if tokens > 0 then
  local R = words(ARGV[12])
  for i = 1, nrules do
    local a = 3 * i - 2
    local limit, exp, period = tonumber(R[a]), tonumber(R[a + 1]), tonumber(R[a + 2])
    local used = used_now(redis.call('GET', KEYS[i]), limit, exp, now_us, now_ns)
    save_state(KEYS[i], limit, exp, used + tokens * period, now_us, now_ns)
  end
end

if cost ~= '0' then
  local day = math.floor(at / DAY_US)
  for s = 1, ncosted do
    local hash = KEYS[nrules + s]
    local since = tonumber(redis.call('HGET', hash, 'c'))
    if not since then
      -- Never counted here: this request's ledger row, stamped before, is part of the
      -- baseline read when the scope is next checked. Count from the next instant.
      redis.call('HSET', hash, 'c', fmt(math.max(now_us, at) + 1))
    elseif at >= since then
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
