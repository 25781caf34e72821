-- Forget a job: its hash, its copies' record, its place in time, its counts; announced.
-- KEYS[1] job hash            dcm:status:{upload id}
-- KEYS[2] targets hash        dcm:targets:{upload id}
-- KEYS[3] jobs by time        KEYS[4] change channel     KEYS[5] status feed stream
-- KEYS[6] state counts        KEYS[7] modality counts
-- ARGV[1] upload id           ARGV[2] when               ARGV[3] feed max
-- Returns 1, or 0 when there was no job.
local h = redis.call('HMGET', KEYS[1], 'state', 'modality', 'label', 'batch_id')
if not h[1] then return 0 end
redis.call('HINCRBY', KEYS[6], h[1], -1)
if h[2] then redis.call('HINCRBY', KEYS[7], h[2], -1) end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
announce(KEYS[5], KEYS[4], ARGV[3], {upload_id = ARGV[1], status = 'deleted',
  event = 'deleted', at = ARGV[2], label = h[3] or nil, batch_id = h[4] or nil})
return 1
