-- sluice's publish on a topic with history (src/cluster/transport.rs runs it).
--
-- Numbers the message, keeps it in the topic's stream and publishes it, atomically, so that the
-- channel carries the messages in offset order. A message already numbered (the same node and
-- sequence number, sent again after a failure) is not added twice.
--
-- KEYS: offset counter, stream, epoch, last sequence per node (all in the channel's slot).
-- ARGV: channel, message, MAXLEN, ttl ms, epoch if none yet, PUBLISH or SPUBLISH, node, seq.
-- Returns { offset, epoch, receivers (-1: a second copy, not published) }; on the channel the
-- message goes as '<offset> <epoch> <message>'.
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
  redis.call('SET', KEYS[3], epoch)
end
local last = redis.call('HGET', KEYS[4], ARGV[7])
if last then
  local s, o = string.match(last, '^(%d+) (%d+)$')
  if tonumber(s) >= tonumber(ARGV[8]) then return {tonumber(o), epoch, -1} end
end
local offset = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[4], ARGV[7], ARGV[8] .. ' ' .. offset)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], offset .. '-1', 'm', ARGV[2])
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
local receivers = redis.call(ARGV[6], ARGV[1], offset .. ' ' .. epoch .. ' ' .. ARGV[2])
return {offset, epoch, receivers}
