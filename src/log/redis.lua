-- The Redis log's scripts share this prelude (src/log/redis.rs appends
-- each script's body to it). ARGV[1] is the key prefix; the keys:
--   <p>:events          every event, in id order (Redis assigns the ids)
--   <p>:topic:<topic>   the same events of one topic, under the same ids
--   <p>:topics          topic -> retained count
--   <p>:topic-bytes     topic -> retained bytes
--   <p>:topic-last      topic -> last id
--   <p>:meta            lost_through, last_id, bytes, lost/<topic>
--   <p>:key:<key>       an idempotency key -> its event's id, expiring
-- An event's fields are topic, data and, when it has one, type.
local P = ARGV[1]
local EV, META = P .. ':events', P .. ':meta'
local COUNTS, BYTES, LAST = P .. ':topics', P .. ':topic-bytes', P .. ':topic-last'
local TP = P .. ':topic:'
-- Most events one script removes, so that no script holds Redis for long.
local EVICT = 4096

-- Ids are "<ms>-<seq>", ordered as pairs of numbers.
local function split(id)
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function before(a, b)
  local am, as = split(a)
  local bm, bs = split(b)
  return am < bm or (am == bm and as < bs)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A new log counts every id from before its creation as lost, as the disk
-- log does: a client resuming from an earlier id is told of the gap.
local function init()
  if redis.call('HEXISTS', META, 'lost_through') == 0 then
    local floor = string.format('%.0f', now_ms() - 1) .. '-18446744073709551615'
    redis.call('HSET', META, 'lost_through', floor, 'last_id', floor, 'bytes', 0)
  end
end

local function field(f, name)
  for i = 1, #f, 2 do
    if f[i] == name then
      return f[i + 1]
    end
  end
end

-- Event::approx_size: topic, type and data bytes, plus 64.
local function size(f)
  local n = 64
  for i = 2, #f, 2 do
    n = n + #f[i]
  end
  return n
end

-- Retention limits from three arguments: events, age in ms, bytes (-1: none).
local function limits(i)
  return { events = tonumber(ARGV[i]), age = tonumber(ARGV[i + 1]), bytes = tonumber(ARGV[i + 2]) }
end

local function over(lim, count, bytes, oldest, now)
  local ms = split(oldest)
  return (lim.events >= 0 and count > lim.events)
    or (lim.bytes >= 0 and bytes > lim.bytes)
    or (lim.age >= 0 and now - ms > lim.age)
end

-- Removes one event from the log and from its topic's stream.
local function remove(id, f)
  local topic, n = field(f, 'topic'), size(f)
  redis.call('XDEL', EV, id)
  redis.call('XDEL', TP .. topic, id)
  redis.call('HINCRBY', META, 'bytes', -n)
  if redis.call('HINCRBY', COUNTS, topic, -1) <= 0 then
    redis.call('HDEL', COUNTS, topic)
    redis.call('HDEL', BYTES, topic)
    redis.call('HDEL', LAST, topic)
    redis.call('DEL', TP .. topic)
  else
    redis.call('HINCRBY', BYTES, topic, -n)
  end
  return n
end

-- Removes the oldest events of a stream (the log, or a topic's) while
-- `lim` is exceeded, at most `budget`; returns the last id removed (or nil)
-- and how many.
local function evict(key, lim, count, bytes, now, budget)
  local last, removed = nil, 0
  while removed < budget do
    local batch = redis.call('XRANGE', key, '-', '+', 'COUNT', 128)
    if #batch == 0 then
      break
    end
    for _, e in ipairs(batch) do
      if removed >= budget or not over(lim, count, bytes, e[1], now) then
        return last, removed
      end
      local n = remove(e[1], e[2])
      count, bytes, removed, last = count - 1, bytes - n, removed + 1, e[1]
    end
  end
  return last, removed
end

local function evict_global(lim, now, budget)
  local bytes = tonumber(redis.call('HGET', META, 'bytes') or '0')
  local last, removed = evict(EV, lim, redis.call('XLEN', EV), bytes, now, budget)
  if last then
    redis.call('HSET', META, 'lost_through', last)
  end
  return removed
end

local function evict_topic(topic, lim, now, budget)
  local count = tonumber(redis.call('HGET', COUNTS, topic) or '0')
  local bytes = tonumber(redis.call('HGET', BYTES, topic) or '0')
  local last, removed = evict(TP .. topic, lim, count, bytes, now, budget)
  if last then
    redis.call('HSET', META, 'lost/' .. topic, last)
  end
  return removed
end

local function oldest()
  local first = redis.call('XRANGE', EV, '-', '+', 'COUNT', 1)[1]
  return first and first[1] or ''
end
