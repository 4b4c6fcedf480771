//! The Lua scripts the Redis log runs. A script runs atomically on the server: nothing else runs
//! between its checks and its writes, and every check comes before the first write, so a refused
//! script has written nothing.

/// Appends to streams at expected versions, all or nothing, and records inbox ids.
///
/// `KEYS[1]` the global stream; then for each append its head hash and its event stream; then one
/// key per inbox id. `ARGV[1]` the number of appends, `ARGV[2]` the number of inbox ids,
/// `ARGV[3]` the inbox window in milliseconds; then for each append its stream id, the version it
/// expects next, the hash it expects at the head (empty for an empty stream) and its number of
/// events, followed by each event's record (see `Record`) and hash.
///
/// Returns `{'ok'}`, `{'dup', id}` or `{'conflict', append index from 1, actual next version}`.
pub(super) const APPEND: &str = r"
local n = tonumber(ARGV[1])
local ids = tonumber(ARGV[2])
local inbox_from = 1 + 2 * n
for i = 1, ids do
  if redis.call('EXISTS', KEYS[inbox_from + i]) == 1 then
    return {'dup', KEYS[inbox_from + i]}
  end
end
local a = 4
for i = 1, n do
  local head = redis.call('HMGET', KEYS[2 * i], 'v', 'h')
  local v = tonumber(head[1] or '0')
  local expected = tonumber(ARGV[a + 1])
  if v + 1 ~= expected or (v > 0 and head[2] ~= ARGV[a + 2]) then
    return {'conflict', tostring(i), string.format('%d', v + 1)}
  end
  a = a + 4 + 2 * tonumber(ARGV[a + 3])
end
a = 4
for i = 1, n do
  local name = ARGV[a]
  local expected = tonumber(ARGV[a + 1])
  local k = tonumber(ARGV[a + 3])
  local last
  for j = 0, k - 1 do
    local e = a + 4 + 2 * j
    local seq = string.format('%d', expected + j)
    local g = redis.call('XADD', KEYS[1], '*', 's', name, 'v', seq, 'r', ARGV[e], 'h', ARGV[e + 1])
    redis.call('XADD', KEYS[2 * i + 1], '0-' .. seq, 'r', ARGV[e], 'h', ARGV[e + 1], 'g', g)
    last = ARGV[e + 1]
  end
  if k > 0 then
    redis.call('HSET', KEYS[2 * i], 'v', string.format('%d', expected + k - 1), 'h', last)
  end
  a = a + 4 + 2 * k
end
for i = 1, ids do
  redis.call('SET', KEYS[inbox_from + i], '1', 'PX', ARGV[3])
end
return {'ok'}
";

/// Opens a stream: creates its head with its entity type, or checks the type of the one there.
/// `KEYS[1]` the head, `ARGV[1]` the entity type. Returns the version, or `{'type', other}`.
pub(super) const OPEN: &str = r"
local head = redis.call('HMGET', KEYS[1], 'v', 'type')
if head[2] and head[2] ~= ARGV[1] then
  return {'type', head[2]}
end
if not head[2] then
  redis.call('HSET', KEYS[1], 'type', ARGV[1])
  if not head[1] then redis.call('HSET', KEYS[1], 'v', '0') end
end
return {'ok', head[1] or '0'}
";

/// Removes a stream's oldest events before a version, with their entries in the global stream,
/// and moves the start of its chain past them. `KEYS[1]` the head, `KEYS[2]` the event stream,
/// `KEYS[3]` the global stream; `ARGV[1]` the first version kept, `ARGV[2]` the most to remove.
/// Returns `{}` or `{first, last}` removed.
pub(super) const TRUNCATE: &str = r"
local before = tonumber(ARGV[1])
if before <= 1 then return {} end
local entries = redis.call('XRANGE', KEYS[2], '-', '0-' .. string.format('%d', before - 1),
  'COUNT', ARGV[2])
if #entries == 0 then return {} end
local first, last, last_hash
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for f = 1, #fields, 2 do
    if fields[f] == 'g' then redis.call('XDEL', KEYS[3], fields[f + 1]) end
    if fields[f] == 'h' then last_hash = fields[f + 1] end
  end
  local seq = string.sub(entry[1], 3)
  if not first then first = seq end
  last = seq
  redis.call('XDEL', KEYS[2], entry[1])
end
redis.call('HSET', KEYS[1], 'first', string.format('%d', tonumber(last) + 1), 'base', last_hash)
return {first, last}
";

/// The key of a subject: made once unless erased. `KEYS[1]` the subject's hash, `ARGV[1]` a fresh
/// wrapped key to store if it has none. Returns the wrapped key, or `false` if erased.
pub(super) const SUBJECT_KEY: &str = r"
if redis.call('HEXISTS', KEYS[1], 'erased') == 1 then return false end
if ARGV[1] ~= '' then redis.call('HSETNX', KEYS[1], 'w', ARGV[1]) end
return redis.call('HGET', KEYS[1], 'w')
";

/// Erases a subject's key and leaves a tombstone. `KEYS[1]` its hash, `ARGV[1]` the time.
/// Returns 1 if it had a key.
pub(super) const ERASE_SUBJECT: &str = r"
local had = redis.call('HDEL', KEYS[1], 'w')
redis.call('HSETNX', KEYS[1], 'erased', ARGV[1])
return had
";

/// Acknowledges a projection's page and applies its read-model writes, fenced by its lease.
/// `KEYS[1]` the global stream, `KEYS[2]` the lease; `ARGV[1]` the group, `ARGV[2]` the lease's
/// token, `ARGV[3]` the lease's time to live in milliseconds, `ARGV[4]` the number of entry ids,
/// then the ids, then each write as its number of arguments followed by them.
/// Returns `{'ok'}` or `{'moved', holder}` (nothing done).
pub(super) const GROUP_ACK: &str = r"
local holder = redis.call('GET', KEYS[2])
if holder ~= ARGV[2] then
  return {'moved', holder or ''}
end
local ids = tonumber(ARGV[4])
local a = 5 + ids
while a <= #ARGV do
  local count = tonumber(ARGV[a])
  redis.call(unpack(ARGV, a + 1, a + count))
  a = a + 1 + count
end
if ids > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 5, 4 + ids))
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {'ok'}
";

/// Takes or renews a lease. `KEYS[1]` the lease, `ARGV[1]` the token, `ARGV[2]` the time to live
/// in milliseconds. Returns `{'ok'}` or `{'held', holder}`.
pub(super) const LEASE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return {'held', holder}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {'ok'}
";

/// Gives a lease up if this token holds it. `KEYS[1]` the lease, `ARGV[1]` the token.
pub(super) const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";
