'use strict'

/** Marks and limits shared by the files of lib/ (and by sluice/ws, in lib/ws/). */

/** Marks a Node socket that sluice has taken over (a second `handleUpgrade` on it throws). */
const kTakenOver = Symbol.for('sluice.takenOver')
/** Marks a `handleProtocols` hook (sluice/ws's) whose answer is taken as ws takes it: any truthy
 * value is the subprotocol, offered or not; a falsy one means none. */
const kAnyProtocol = Symbol.for('sluice.ws.anyProtocol')
/** Marks the request objects sluice builds for its own listener (sluice/ws turns them into
 * IncomingMessages; a request an application passes to handleUpgrade is left as it is). */
const kOwnRequest = Symbol.for('sluice.ownRequest')
const EMPTY = Buffer.alloc(0)
/** Longest conflation key. */
const MAX_KEY_BYTES = 1024
/** Largest payload of a ping or pong (RFC 6455 §5.5). */
const MAX_CONTROL_PAYLOAD = 125

/** Largest number of bytes the sizes accept (1 TiB): far above any sane bound, below 2^53. */
const MAX_BYTES = 2 ** 40
/** Largest timer value Node itself accepts (setTimeout's 2^31 - 1 ms). */
const MAX_MS = 2 ** 31 - 1
/** Default `close()` timeout, the same as the per-connection `closeTimeout`. */
const DEFAULT_CLOSE_TIMEOUT = 5000
/** sluice's default handshakeTimeout (DEFAULT_HANDSHAKE_TIMEOUT_MS in src/core/config.rs). */
const DEFAULT_HANDSHAKE_TIMEOUT = 5000

module.exports = {
  kTakenOver,
  kAnyProtocol,
  kOwnRequest,
  EMPTY,
  MAX_KEY_BYTES,
  MAX_CONTROL_PAYLOAD,
  MAX_BYTES,
  MAX_MS,
  DEFAULT_CLOSE_TIMEOUT,
  DEFAULT_HANDSHAKE_TIMEOUT,
}
