"""The admission script: rate limits, the concurrency cap and the quota reservation, decided
atomically inside Redis in one round trip.

Rate limits are GCRA (the generic cell rate algorithm, a token bucket that stores one
timestamp per limiter): ``rate`` requests per ``window``, with a burst of up to ``rate``.
A request the rate limit refuses writes nothing (its 429 costs the client nothing). One it
lets through takes its token whatever follows: admitted, or refused for the concurrency cap
or the quota. NOTE: those refusals took none, so a client hammering a used-up quota got 402s
at ~600 a second on a 20-a-minute plan, each a round trip and a database read for the API,
and never met the limit that meters requests (an audit). Only an admitted request takes a
slot or a reservation (a quota counter's seed aside, which is the ledger's figure).

A quota counter that is missing (the first reservation of a period, or a Redis that lost
its data) is never taken for 0: the script answers "seed" without writing anything, and the
caller runs it again with the period's inputs in the ledger (ARGV 11), which it sets only if
the counter is still missing, so concurrent seeds cannot count anything twice.

A reservation is also held, until its call is settled, in the set of holds (KEYS 5, sorted by
when the call must have ended), as "<request id> <inputs> <counter key> <attempt's own id>"
(the first two ids differ once an Idempotency-Key retry takes over its first attempt's:
``holds.hold_rekey``): one whose API
process died before it settled is found there and released (``limits.holds``).

A request whose answer is in the result cache can be metered here too, so that it needs no
second round trip (``limits.hits``): where ARGV 13 asks for it and every row key (the first
ARGV 14 of KEYS 6...) holds a row, and the key generation named by ARGV 17 (the key after the
rows) still holds that value, an admitted request's usage event (ARGV 15, its tokens summed
from the rows, ARGV 16) is added to the usage stream (ARGV 18) and the request is settled as
answered at once: its inputs stay counted, and it takes no concurrency slot or hold. A mark
(``hitmeter:<request id>``) lets the same admission run again after a lost reply find it
metered, not meter it (or count its inputs) twice.

KEYS: 1 tenant limiter, 2 key limiter, 3 in-flight set (sorted by expiry), 4 quota counter,
      5 the set of holds, 6... keys whose values are read and returned (the prefetch)
ARGV: 1 now (ms), 2 window (ms), 3 tenant rate, 4 key rate, 5 concurrency cap (-1: none),
      6 inputs to reserve (0: not an inference call), 7 hard cap (-1: none),
      8 request id, 9 in-flight TTL (ms), 10 quota TTL (s),
      11 the quota counter's seed, the ledger's inputs this period (-1: not read),
      12 "1" when this request took its rate-limit token already (an admission run again
      for it after a refusal that took one: an Idempotency-Key replay, a key checked again),
      13 "1" to meter a full cache hit, 14 how many of KEYS 6... are its rows, 15 and 16 its
      usage event before and after its tokens, 17 the value the key after the rows must hold
      ("": none), 18 the usage stream
Returns {verdict, limit, remaining, reset_ms, retry_ms, used}; verdict is one of
"ok", "rate", "concurrency", "quota", "seed"; "ok" adds the values of KEYS 6... and 1 where
the request was metered (else 0).
"""

ADMIT = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local rates = {tonumber(ARGV[3]), tonumber(ARGV[4])}
local cap = tonumber(ARGV[5])
local inputs = tonumber(ARGV[6])
local hard_cap = tonumber(ARGV[7])

-- The same request admitted again (its first admission timed out in a Redis stall, and ran
-- all the same once Redis resumed): its rate limit token, its slot and its reservation are
-- taken already, and are not taken twice (the counter kept the second reservation for good,
-- and at a limit the second was refused while the first's slot and hold stayed taken).
local hold = ARGV[8] .. ' ' .. inputs .. ' ' .. KEYS[4] .. ' ' .. ARGV[8]
local held, again = false, false
if inputs > 0 then
  if cap >= 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  end
  held = hard_cap >= 0 and redis.call('ZSCORE', KEYS[5], hold)
  again = held or (cap >= 0 and redis.call('ZSCORE', KEYS[3], ARGV[8]))
end
local values = {}
if #KEYS > 5 then
  values = redis.call('MGET', unpack(KEYS, 6))
end
-- A full cache hit metered by an earlier run of this admission (its reply was lost).
local meter = ARGV[13] == '1' and inputs > 0
local marker = 'hitmeter:' .. ARGV[8]
local metered_before = meter and redis.call('EXISTS', marker) == 1

-- (Its token is taken: the limiters are read, not moved, and never refuse it.)
local taken = again or metered_before or ARGV[12] == '1'
local tats = {}
local limit, remaining, reset = rates[1], rates[1], 0
-- Refused by both limiters, the request is told the longer wait: the tenant's shorter one
-- alone sent a client that waited it into the key's refusal.
local refused = false
for i = 1, 2 do
  local interval = window / rates[i]
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval
  if taken then new_tat = tat end  -- (the headers say what is left)
  local allow_at = new_tat - window
  if allow_at > now and not taken then
    local retry = math.ceil(allow_at - now)
    if not refused or retry > refused[5] then
      refused = {'rate', rates[i], 0, math.ceil(tat - now), retry, 0}
    end
  end
  tats[i] = new_tat
  local left = math.floor((window - (new_tat - now)) / interval)
  if left < remaining or i == 1 then
    limit, remaining, reset = rates[i], left, math.ceil(new_tat - now)
  end
end
if refused then
  return refused
end

local function take_tokens()
  -- NOTE: formatted by hand: Lua's default number-to-string keeps 14 digits, too few for
  -- a millisecond timestamp with a fractional interval added.
  if not taken then
    for i = 1, 2 do
      redis.call('SET', KEYS[i], string.format('%.3f', tats[i]), 'PX', window)
    end
  end
end

-- The tokens of a full cache hit to meter now (false: not one).
local hit_tokens = false
if meter and not again and not metered_before then
  local rows = tonumber(ARGV[14])
  hit_tokens = 0
  for i = 1, rows do
    local ok, row = pcall(cjson.decode, values[i] or '')
    if not ok or type(row) ~= 'table' then
      hit_tokens = false
      break
    end
    hit_tokens = hit_tokens + (tonumber(row['tokens']) or 0)
  end
  if hit_tokens and ARGV[17] ~= '' and values[rows + 1] ~= ARGV[17] then
    hit_tokens = false  -- the API key changed: the request is authenticated again
  end
end

local used = 0
if inputs > 0 and not metered_before then
  if cap >= 0 and not again then
    if redis.call('ZCARD', KEYS[3]) >= cap then
      take_tokens()
      return {'concurrency', limit, remaining, reset, 1000, 0}
    end
  end
  if hard_cap >= 0 then
    local counted = redis.call('GET', KEYS[4])
    if not counted then
      local seed = tonumber(ARGV[11])
      if seed < 0 then
        return {'seed', limit, remaining, reset, 0, 0}
      end
      redis.call('SET', KEYS[4], ARGV[11], 'EX', tonumber(ARGV[10]))
      counted = seed
    end
    used = tonumber(counted)
    if not held and used + inputs > hard_cap then
      take_tokens()
      return {'quota', limit, remaining, reset, 0, used}
    end
  end
  -- Admitted. A full cache hit is metered now; where its event cannot be added (pcall: an
  -- error in a script keeps the writes before it), it is held as any call, and the caller
  -- meters it itself or fails it, which gives its inputs back.
  if hit_tokens then
    local event = ARGV[15] .. string.format('%d', hit_tokens) .. ARGV[16]
    local added = redis.pcall('XADD', ARGV[18], '*', 'event', event)
    if type(added) == 'table' and added.err then
      hit_tokens = false
    else
      redis.call('SET', marker, '1', 'PX', tonumber(ARGV[9]))
    end
  end
  if hard_cap >= 0 and not held then
    used = redis.call('INCRBY', KEYS[4], inputs)
    redis.call('EXPIRE', KEYS[4], tonumber(ARGV[10]))
    if not hit_tokens then  -- (a metered hit is settled as answered: its inputs stay)
      redis.call('ZADD', KEYS[5], now + tonumber(ARGV[9]), hold)
    end
  end
  if cap >= 0 and not hit_tokens then
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[9]), ARGV[8])
    redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[9]))
  end
end

take_tokens()
local metered = (hit_tokens or metered_before) and 1 or 0
return {'ok', limit, remaining, reset, 0, used, values, metered}
"""

# A reservation given back whose hold is gone already, to a counter that still exists (KEYS
# 1: the counter, ARGV 1: the inputs; see RELEASE on why not DECRBY alone).
REFUND = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('DECRBY', KEYS[1], ARGV[1])
end
return false
"""

# A held reservation released (KEYS 1: the set of holds, 2: the counter; ARGV 1: the hold,
# 2: its inputs, 3: "1" to give them back): given back only by whoever removes the hold, so
# a failed call's settlement and the sweep of holds never both refund it; and only to a
# counter that still exists (not DECRBY alone, which would create one that a flush removed,
# below zero: admission would take it as counted and never seed it from the ledger).
RELEASE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 and ARGV[3] == '1'
   and redis.call('EXISTS', KEYS[2]) == 1 then
  return redis.call('DECRBY', KEYS[2], ARGV[2])
end
return false
"""
