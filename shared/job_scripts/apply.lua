-- One event applied to its job: atomic, forward only, once per event, counted and announced.
-- KEYS[1] job hash            dcm:status:{upload id}
-- KEYS[2] change channel      dcm:notify:status
-- KEYS[3] status feed stream  dcm:feeds:status
-- KEYS[4] state counts        dcm:counts:states
-- KEYS[5] modality counts     dcm:counts:modalities
-- ARGV[1] event id            ARGV[2] state it leads to (or a note's name)
-- ARGV[3] rank of ARGV[2]     (negative: a note in the history, the state stays)
-- ARGV[4] when it happened    ARGV[5] fields it records (JSON object of strings)
-- ARGV[6] history max         ARGV[7] upload id        ARGV[8] feed max
-- ARGV[9] rank of the final states
-- ARGV[10] fields several states write (JSON list)
-- Returns 1 when the state moved forward, else 0.
local history = cjson.decode(redis.call('HGET', KEYS[1], 'history') or '[]')
for _, h in ipairs(history) do
  if h.event_id == ARGV[1] then return 0 end
end
local rank = tonumber(redis.call('HGET', KEYS[1], 'rank') or '-1')
local before = redis.call('HMGET', KEYS[1], 'state', 'modality')
local mine = tonumber(ARGV[3])
local shared = {}
for _, f in ipairs(cjson.decode(ARGV[10])) do shared[f] = true end
-- An event that moves the job forward, keeps it in its state (another attempt) or is a note
-- writes all its fields. One behind the job's state writes none that several states write; one
-- that comes after another event made the job final writes nothing.
local behind = mine >= 0 and mine < rank
local ended = mine >= 0 and mine == rank and rank >= tonumber(ARGV[9])
if not ended then
  for k, v in pairs(cjson.decode(ARGV[5])) do
    if not (behind and shared[k]) then redis.call('HSET', KEYS[1], k, v) end
  end
end
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[4])
local moved = 0
if mine >= 0 then
  redis.call('HSETNX', KEYS[1], 'at:' .. ARGV[2], ARGV[4])
  if mine > rank then
    redis.call('HSET', KEYS[1], 'state', ARGV[2], 'rank', ARGV[3], 'updated_at', ARGV[4])
    if before[1] then redis.call('HINCRBY', KEYS[4], before[1], -1) end
    redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
    moved = 1
  end
end
local after = redis.call('HMGET', KEYS[1], 'state', 'modality', 'label', 'batch_id')
if after[2] and not before[2] then redis.call('HINCRBY', KEYS[5], after[2], 1) end
table.insert(history, {event_id = ARGV[1], state = ARGV[2], at = ARGV[4]})
while #history > tonumber(ARGV[6]) do table.remove(history, 1) end
redis.call('HSET', KEYS[1], 'history', cjson.encode(history))
announce(KEYS[3], KEYS[2], ARGV[8], {upload_id = ARGV[7], status = after[1], event = ARGV[2],
  at = ARGV[4], label = after[3] or nil, batch_id = after[4] or nil})
return moved
