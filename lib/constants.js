'use strict'

/**
 * Marks and limits shared by the files of lib/ (and by sluice/ws, in lib/ws/). The limits and
 * defaults the native side implements come from it (`MAX_BYTES`, `MAX_MS`,
 * `DEFAULT_CLOSE_TIMEOUT_MS`, ... in index.d.ts), not from here.
 */

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
module.exports = {
  kTakenOver,
  kAnyProtocol,
  kOwnRequest,
  EMPTY,
  MAX_KEY_BYTES,
}
