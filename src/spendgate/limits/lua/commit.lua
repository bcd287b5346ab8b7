-- Settlement: drop the request's reservation, charge its tokens, record its cost.
-- KEYS: one state key per token rule, then one hash per costed scope, then per reserved
--       scope its hash and its reservation set.
-- ARGV: now_us, now_ns, #token rules, #costed scopes, #reserved scopes, tokens, cost (pico),
--       reservation member ('' : none), its deadline (µs), when it was made (µs; '' when
--       this settlement was sent before), then one string of space-separated words: per
--       token rule: limit, unit exponent, period.
-- Reply: 1 applied; 0 applied already by an earlier send (nothing changed).
--
-- A settlement whose reply was lost is sent again (by the outage guard) and must not count
-- twice. One holding a reservation tells, with no record kept per request: applying it
-- removes its member from every reservation set, and a member leaves a set otherwise only
-- at its deadline (expiry) or with Redis's data. So a member found in no set before its
-- deadline means "applied already" (reply 0; so does a first try that arrives, delayed in
-- the network, after its own retry), unless Redis lost its data after the
-- reservation was made (its scope began counting again later). Then a first try applies,
-- since no earlier send exists; a retry does not: it was kept through the outage in which
-- Redis lost the data, so its ledger row is older than the new count, which the ledger
-- rebuilt with it. Past the deadline a settlement applies (a lost reply can no longer be
-- told apart), and one without a reservation applies every time it is sent.
local now_us, now_ns = clock_now(ARGV[1], ARGV[2])
local nrules, ncosted, nreserved = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tokens, cost, member = tonumber(ARGV[6]), ARGV[7], ARGV[8]

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
  if not released and now_us < tonumber(ARGV[9]) then
    local made = tonumber(ARGV[10])
    local lost = false
    if made then
      for s = 1, nreserved do
        local since = redis.call('HGET', KEYS[nrules + ncosted + 2 * s - 1], 'c')
        if not since or tonumber(since) > made then lost = true end
      end
    end
    if not lost then return 0 end
  end
end

if tokens > 0 then
  local R = words(ARGV[11])
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
