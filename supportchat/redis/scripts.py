"""Lua scripts: each runs atomically inside Redis, so the idempotency check,
the seq increment, the stream append and the idempotency record can never
be separated by a crash. Keys live under one prefix (default ``sc:``);
Redis Cluster is not supported (keys are derived inside the scripts), a
single primary with replicas/Sentinel is.

Layout, for conversation C and principal key U (``storage.models.principal_key``:
a customer's key is "c:<id>", so a customer and an agent with the same id
are two users here too):
  {p}stream           the message stream (persisters, bots consume it)
  {p}seq:C            last seq assigned in C
  {p}members:C        hash user -> role of C's participants
  {p}recent:C         zset seq -> message JSON not yet trimmed by persisters
  {p}meta:C           hash last_seq, last_msg_id, last_ts
  {p}state:U:C        hash unread, last_read_seq (the source's session state)
  {p}cnt:C, mine:C:U  zsets of text-message seqs (all, and U's own) for unread
  {p}dedup:U:K        message JSON of U's client_msg_id K, with a TTL

The keys holding users were named parts:, sess:, cnt:C:U and idem: before
identities were namespaced; those written by older nodes hold plain ids and
are never read again (they expire): members are seeded again from SQL, which
the migration rewrote (see docs/deploy.md, "Upgrading").
"""

# ARGV: prefix, conv, sender, client_msg_id ('' for none), kind, head, tail,
#       msg_id, ts, require_participant ('1'/'0'), window, key_ttl, floor,
#       [origin, now, frame_tail, sender_role, bot_keep]
# The message JSON is head .. seq .. tail (head ends with '"seq":').
# ``floor`` is the highest seq the calling node has seen in the conversation:
# if Redis lost writes (fail-over, a restart from an older file), its counter
# is raised before use, so new messages never reuse seqs already handed out.
# Fan-out in the same round trip: with ``origin`` (the calling node's id;
# '' for none), the script also publishes the delivery to every
# other node where a participant has a live connection ({p}presence:U
# entries "node|expires_at" with expires_at > ``now``), as the JSON
# {"origin":..,"user_ids":[participants],"frame":{"seq":N <frame_tail>}:
# the same delivery redis/bus.py would publish after the reply, without the
# presence reads and PUBLISHes of another round trip per message. The
# stream entry also carries the conversation (c), sender role (r) and kind
# (k), so consumers can skip entries without decoding them.
# Once a bot node has created {p}bot, the bots' stream (with its consumer
# group), what a bot can answer is also added there: a customer's text in a
# conversation without an agent or admin among its members, and the
# system's events. Conversations a human holds cost the bots nothing.
# Entries older than ``bot_keep`` seconds ('0': no age limit) are trimmed
# as it grows (XADD MINID ~), what the bots have read by the persisters.
APPEND = r"""
local p, conv, sender, cmid, kind = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local head, tail, msg_id, ts = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local require_part, window, ttl = ARGV[10], tonumber(ARGV[11]), tonumber(ARGV[12])
local floor = tonumber(ARGV[13] or "0")
local origin, now, ftail, role = ARGV[14] or "", tonumber(ARGV[15] or "0"), ARGV[16], ARGV[17] or ""
local bot_keep = tonumber(ARGV[18] or "") or 0
local idem = p .. "dedup:" .. sender .. ":" .. cmid
if cmid ~= "" then
  local prior = redis.call("GET", idem)
  if prior then
    return {"dup", prior, unpack(redis.call("HGETALL", p .. "members:" .. conv))}
  end
end
local parts_key, seq_key = p .. "members:" .. conv, p .. "seq:" .. conv
if redis.call("EXISTS", parts_key) == 0 or redis.call("EXISTS", seq_key) == 0 then
  return {"seed"}
end
if require_part == "1" and redis.call("HEXISTS", parts_key, sender) == 0 then
  return {"notfound"}
end
if tonumber(redis.call("GET", seq_key)) < floor then redis.call("SET", seq_key, floor) end
local seq = redis.call("INCR", seq_key)
local msg = head .. seq .. tail
redis.call("XADD", p .. "stream", "*", "m", msg, "c", conv, "r", role, "k", kind)
redis.call("ZADD", p .. "recent:" .. conv, seq, msg)
redis.call("HSET", p .. "meta:" .. conv, "last_seq", seq, "last_msg_id", msg_id, "last_ts", ts)
local parts = redis.call("HGETALL", parts_key)
if redis.call("EXISTS", p .. "bot") == 1 then
  local for_bot = role == "system" and kind == "event"
  if role == "customer" and kind ~= "event" then
    for_bot = true
    for i = 2, #parts, 2 do
      if parts[i] == "agent" or parts[i] == "admin" then for_bot = false end
    end
  end
  if for_bot then
    if bot_keep > 0 then
      redis.call("XADD", p .. "bot", "MINID", "~", math.floor((now - bot_keep) * 1000), "*",
                 "m", msg, "c", conv, "r", role, "k", kind)
    else
      redis.call("XADD", p .. "bot", "*", "m", msg, "c", conv, "r", role, "k", kind)
    end
  end
end
for i = 1, #parts, 2 do
  local sk = p .. "state:" .. parts[i] .. ":" .. conv
  if parts[i] == sender then
    redis.call("HSET", sk, "unread", 0, "last_read_seq", seq)
  elseif kind ~= "event" then
    redis.call("HINCRBY", sk, "unread", 1)
  end
  redis.call("EXPIRE", sk, ttl)
end
if kind ~= "event" then
  redis.call("ZADD", p .. "cnt:" .. conv, seq, seq)
  redis.call("ZADD", p .. "mine:" .. conv .. ":" .. sender, seq, seq)
  redis.call("EXPIRE", p .. "cnt:" .. conv, ttl)
  redis.call("EXPIRE", p .. "mine:" .. conv .. ":" .. sender, ttl)
end
for _, k in ipairs({seq_key, parts_key, p .. "meta:" .. conv, p .. "recent:" .. conv}) do
  redis.call("EXPIRE", k, ttl)
end
if cmid ~= "" then
  redis.call("SET", idem, msg, "EX", window)
end
local fanned = "0"
if origin ~= "" then
  local users, nodes, order = {}, {}, {}
  for i = 1, #parts, 2 do
    users[#users + 1] = parts[i]
    local live = redis.call("HGETALL", p .. "presence:" .. parts[i])
    for j = 2, #live, 2 do
      local node, expires = string.match(live[j], "^(.*)|([^|]*)$")
      if node and not nodes[node] and (tonumber(expires) or 0) > now then
        nodes[node] = true
        order[#order + 1] = node
      end
    end
  end
  local payload = nil
  for _, node in ipairs(order) do
    if node ~= origin then
      payload = payload or ('{"origin":' .. cjson.encode(origin) .. ',"user_ids":' .. cjson.encode(users)
                            .. ',"frame":{"seq":' .. seq .. ftail .. '}')
      redis.call("PUBLISH", p .. "node:" .. node, payload)
    end
  end
  fanned = "1"
end
return {"ok", msg, fanned, unpack(parts)}
"""

# Seed (or raise) a conversation's counter and participants from SQL.
# ARGV: prefix, conv, floor_seq, key_ttl, user1, role1, user2, role2, ...
SEED = r"""
local p, conv, floor, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local seq_key, parts_key = p .. "seq:" .. conv, p .. "members:" .. conv
local cur = tonumber(redis.call("GET", seq_key) or "-1")
if cur < floor then redis.call("SET", seq_key, floor) end
for i = 5, #ARGV, 2 do
  redis.call("HSETNX", parts_key, ARGV[i], ARGV[i + 1])
end
redis.call("EXPIRE", seq_key, ttl)
redis.call("EXPIRE", parts_key, ttl)
return tonumber(redis.call("GET", seq_key))
"""

# ARGV: prefix, conv, user, seq -> new unread count, or -1 if not a participant
MARK_READ = r"""
local p, conv, user, seq = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call("HEXISTS", p .. "members:" .. conv, user) == 0 then return -1 end
local last = tonumber(redis.call("GET", p .. "seq:" .. conv) or "0")
if seq > last then seq = last end
if seq < 0 then seq = 0 end
local after = "(" .. seq
local unread = redis.call("ZCOUNT", p .. "cnt:" .. conv, after, "+inf")
             - redis.call("ZCOUNT", p .. "mine:" .. conv .. ":" .. user, after, "+inf")
redis.call("HSET", p .. "state:" .. user .. ":" .. conv, "unread", unread, "last_read_seq", seq)
return unread
"""

# Store idempotency outcomes written while Redis was down (recovery).
# ARGV: prefix, window, then sender, client_msg_id, message JSON triples
REMEMBER = r"""
local p, window = ARGV[1], tonumber(ARGV[2])
for i = 3, #ARGV, 3 do
  redis.call("SET", p .. "dedup:" .. ARGV[i] .. ":" .. ARGV[i + 1], ARGV[i + 2], "EX", window, "NX")
end
return 1
"""

# Presence writes, in order. ARGV: prefix, ttl_ms, then quadruples
# op ('t' touch / 'r' remove), user, connection, "node|expires_at" ('' for r).
PRESENCE = r"""
local p, ttl = ARGV[1], tonumber(ARGV[2])
for i = 3, #ARGV, 4 do
  local key = p .. "presence:" .. ARGV[i + 1]
  if ARGV[i] == "t" then
    redis.call("HSET", key, ARGV[i + 2], ARGV[i + 3])
    redis.call("PEXPIRE", key, ttl)
    local _, expires = string.match(ARGV[i + 3], "^(.*)|([^|]*)$")
    redis.call("ZADD", p .. "online", expires, ARGV[i + 1])
  else
    redis.call("HDEL", key, ARGV[i + 2])
  end
end
return 1
"""
