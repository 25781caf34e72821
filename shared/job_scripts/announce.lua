-- Prepended to every script that changes a job: a status change is appended to the capped
-- feed stream (which gives it its id) and published on the change channel.
local function announce(feed, channel, feed_max, change)
  change.id = redis.call('XADD', feed, 'MAXLEN', '~', feed_max, '*', 'data', cjson.encode(change))
  redis.call('PUBLISH', channel, cjson.encode(change))
end
