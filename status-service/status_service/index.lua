-- Index one archived instance (not a duplicate) under its study, series and SOP uid; once per
-- upload.
-- KEYS[1] study of upload     dcm:indexes:study-of-upload
-- KEYS[2] studies by date     KEYS[3] studies by patient name    KEYS[4] studies by update
-- KEYS[5] study hash          KEYS[6] study's uploads            KEYS[7] study's series
-- KEYS[8] study's instances   KEYS[9] study's modalities
-- KEYS[10] series hash        KEYS[11] series' instances         KEYS[12] instance hash
-- ARGV[1] upload id   ARGV[2] study uid   ARGV[3] series uid   ARGV[4] sop uid
-- ARGV[5] modality ('' if none)   ARGV[6] now   ARGV[7] modality set prefix
-- ARGV[8] date score ('' if none)   ARGV[9] name key ('' if none)
-- ARGV[10] the number n of exact indexes, then n times: its hash field, set prefix and value
-- digest ('' if none); then the number of study attribute name/value pairs and the pairs,
-- the number of series pairs and the pairs, then the instance's pairs to the end.
-- Returns 1, or 0 when the upload was indexed already.
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
local study = ARGV[2]
redis.call('HSET', KEYS[6], ARGV[1], ARGV[3] .. '\t' .. ARGV[4] .. '\t' .. ARGV[5])
redis.call('HINCRBY', KEYS[7], ARGV[3], 1)
redis.call('HINCRBY', KEYS[8], ARGV[4], 1)
redis.call('HINCRBY', KEYS[11], ARGV[4], 1)
if ARGV[5] ~= '' and redis.call('HINCRBY', KEYS[9], ARGV[5], 1) == 1 then
  redis.call('SADD', ARGV[7] .. ARGV[5], study)
end
local i = 11
for _ = 1, tonumber(ARGV[10]) do
  local field, prefix, new = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if new ~= '' then
    local old = redis.call('HGET', KEYS[5], field)
    if old ~= new then
      if old then redis.call('SREM', prefix .. old, study) end
      redis.call('SADD', prefix .. new, study)
      redis.call('HSET', KEYS[5], field, new)
    end
  end
  i = i + 3
end
local pairs_end = i + 2 * tonumber(ARGV[i])
i = i + 1
while i < pairs_end do
  redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 1])
  i = i + 2
end
pairs_end = i + 2 * tonumber(ARGV[i])
i = i + 1
while i < pairs_end do
  redis.call('HSET', KEYS[10], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('DEL', KEYS[12])
redis.call('HSET', KEYS[12], 'study_uid', study, 'series_uid', ARGV[3], 'sop_uid', ARGV[4])
while i + 1 <= #ARGV do
  redis.call('HSET', KEYS[12], ARGV[i], ARGV[i + 1])
  i = i + 2
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[10], 'modality', ARGV[5])
  redis.call('HSET', KEYS[12], 'modality', ARGV[5])
end
redis.call('HSET', KEYS[10], 'study_uid', study, 'series_uid', ARGV[3],
  'instance_count', redis.call('HLEN', KEYS[11]), 'updated_at', ARGV[6])
if ARGV[9] ~= '' then
  local old = redis.call('HGET', KEYS[5], 'ix:patient_name')
  if old ~= ARGV[9] then
    if old then redis.call('ZREM', KEYS[3], old .. '\0' .. study) end
    redis.call('ZADD', KEYS[3], 0, ARGV[9] .. '\0' .. study)
    redis.call('HSET', KEYS[5], 'ix:patient_name', ARGV[9])
  end
end
if ARGV[8] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[8], study)
  redis.call('HSET', KEYS[5], 'ix:date', ARGV[8])
elseif redis.call('ZADD', KEYS[2], 'NX', 0, study) == 1 then
  redis.call('HSET', KEYS[5], 'ix:date', '0')
end
local modalities = redis.call('HKEYS', KEYS[9])
table.sort(modalities)
redis.call('HSET', KEYS[5], 'study_uid', study, 'modalities', table.concat(modalities, ','),
  'series_count', redis.call('HLEN', KEYS[7]), 'instance_count', redis.call('HLEN', KEYS[8]),
  'updated_at', ARGV[6])
redis.call('ZADD', KEYS[4], ARGV[6], study)
return 1
