-- Settle an intake whose transaction (shared/intake.py) went unanswered: did it create the job?
-- KEYS[1] job hash            dcm:status:{upload id}, which the transaction creates
-- KEYS[2] fence               dcm:intake-fences:{upload id}, which the transaction watches
-- ARGV[1] the fence's lifetime, seconds
-- Returns 1 when the job exists: the transaction ran. Else 0, and the fence is set: a watched
-- key changed, so the transaction, should it reach Redis later, runs nothing (EXEC is nil).
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
return 0
