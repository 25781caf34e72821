-- A failed job's failed stage run again: the job back to where that stage starts, the failed
-- entry queued again on its stream and the job.retried fact published, in one step, so the
-- worker it wakes can never overtake the reset.
-- KEYS[1] job hash            dcm:status:{upload id}
-- KEYS[2] the failed entry's stream
-- KEYS[3] change channel      KEYS[4] status feed stream
-- KEYS[5] state counts
-- KEYS[6] the job.retried event's stream (the dead letters)
-- ARGV[1] event id of the job.retried       ARGV[2] state it goes back to
-- ARGV[3] rank of ARGV[2]     ARGV[4] when   ARGV[5] upload id
-- ARGV[6] the failed entry (event JSON)     ARGV[7] fields its stage wrote (JSON list)
-- ARGV[8] feed max            ARGV[9] history max
-- ARGV[10] the job.retried event JSON
-- Returns 1, or 0 when the job is not failed.
if redis.call('HGET', KEYS[1], 'state') ~= 'failed' then return 0 end
redis.call('HDEL', KEYS[1], 'error', 'failed_stage', 'failed_event', 'deliveries', 'at:failed')
for _, f in ipairs(cjson.decode(ARGV[7])) do redis.call('HDEL', KEYS[1], f) end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'rank', ARGV[3], 'updated_at', ARGV[4])
redis.call('HINCRBY', KEYS[5], 'failed', -1)
redis.call('HINCRBY', KEYS[5], ARGV[2], 1)
local history = cjson.decode(redis.call('HGET', KEYS[1], 'history') or '[]')
table.insert(history, {event_id = ARGV[1], state = 'retried', at = ARGV[4]})
while #history > tonumber(ARGV[9]) do table.remove(history, 1) end
redis.call('HSET', KEYS[1], 'history', cjson.encode(history))
redis.call('XADD', KEYS[2], '*', 'data', ARGV[6])
redis.call('XADD', KEYS[6], '*', 'data', ARGV[10])
local filed = redis.call('HMGET', KEYS[1], 'label', 'batch_id')
announce(KEYS[4], KEYS[3], ARGV[8], {upload_id = ARGV[5], status = ARGV[2], event = 'retried',
  at = ARGV[4], label = filed[1] or nil, batch_id = filed[2] or nil})
return 1
