'use strict'

/**
 * The event stream from the native side: batches of `[kind, id, ...]` arrays (`EventKind` in
 * index.d.ts says what each kind carries), handled in order, in slices that leave the event loop
 * its turns.
 */

const { EventKind, SendFate } = require('./native')
const { sluiceError, callSafely, safeEmit } = require('./errors')
const { Connection } = require('./connection')
const { ownRequest } = require('./upgrade')

/**
 * Longest run of event handling (ms) before the event loop gets a turn: timers fire at most this
 * much (plus one listener call) late during an inbound flood.
 */
const DISPATCH_SLICE_MS = 10


/**
 * Handles `server`'s events for at most DISPATCH_SLICE_MS, then lets the event loop run (timers,
 * I/O) and goes on from a setImmediate. After the batch of the native side's thread-safe call,
 * the next batches (1,024 events, 1 MiB of inbound data at most each) are taken with
 * `takeEvents()` until one is empty; only then does the native side call again. So however long
 * an inbound flood lasts, and however slow the listeners, the server's own timers keep firing;
 * meanwhile the native queue fills up, its readers pause, and TCP pushes back on the clients.
 *
 * @param {import('./server').Server} server
 */
function drain(server) {
  server._draining = true
  const deadline = performance.now() + DISPATCH_SLICE_MS
  let handled = 0
  let idle = false
  try {
    for (;;) {
      if (server._batches.length === 0) {
        const next = server._state === 'closed' ? [] : server._native.takeEvents()
        if (next.length === 0) {
          idle = true
          break
        }
        server._batches.push(next)
      }
      const batch = server._batches[0]
      if (server._batchPos === batch.length) {
        server._batches.shift()
        server._batchPos = 0
        continue
      }
      handleEvent(server, batch[server._batchPos++])
      if ((++handled & 15) === 0 && performance.now() > deadline) break
    }
  } finally {
    // Also after an exception thrown out of a handler: delivery must not stall.
    if (idle) server._draining = false
    else setImmediate(server._drainLater)
  }
}

/** The error a `send` callback gets for a frame that was not written. */
function sendError(fate) {
  return fate === SendFate.Replaced
    ? sluiceError(Error, 'ERR_SLUICE_REPLACED', 'the message was replaced, before it was written, by a newer one with the same key')
    : fate === SendFate.Expired
      ? sluiceError(Error, 'ERR_SLUICE_EXPIRED', 'the message was not written: its ttl ran out while it waited in the queue')
      : sluiceError(Error, 'ERR_SLUICE_DROPPED', 'the message was dropped before it was written: the connection closed, or the policy refused it')
}

/** One event: to the server, a pending promise or callback, or a connection. */
function handleEvent(server, ev) {
  const kind = ev[0]
  if (kind === EventKind.Connection) {
    const token = ev[4]
    const entry = token ? server._handshakes.get(token) : undefined
    if (entry) server._handshakes.delete(token)
    const req = entry ? entry.req : ownRequest(ev[3], server._options.tls)
    const conn = new Connection(ev[1], req, server, ev[2], ev[5])
    server._connections.set(ev[1], conn)
    server._updateHold()
    safeEmit(server, 'connection', conn, req)
    if (entry && entry.callback) callSafely(entry.callback, conn, req)
    conn._syncInterest()
    return
  }
  if (kind === EventKind.Verify) {
    server._verify(ev[1], ev[2], ev[3])
    return
  }
  if (kind === EventKind.HandshakeFailed) {
    server._handshakes.delete(ev[1])
    server._updateHold()
    return
  }
  if (kind === EventKind.Published || kind === EventKind.Resumed) {
    const p = server._pending.get(ev[1])
    if (p) {
      server._pending.delete(ev[1])
      if (kind === EventKind.Resumed) p.resolve({ recovered: ev[2], offset: ev[3], epoch: ev[4] })
      else if (ev[4]) p.reject(sluiceError(Error, ev[4], 'not published: Redis could not be reached, and only Critical messages are held during an outage'))
      else p.resolve({ offset: ev[2], epoch: ev[3] })
    }
    return
  }
  if (kind === EventKind.Sent) {
    const callback = server._acks.get(ev[2])
    if (callback) {
      server._acks.delete(ev[2])
      callSafely(callback, ev[3] === SendFate.Written ? null : sendError(ev[3]))
    }
    return
  }
  if (kind === EventKind.Closed) {
    server._finishClose()
    return
  }
  if (kind === EventKind.FanoutDrain) {
    server._fanoutDrained()
    return
  }
  const conn = server._connections.get(ev[1])
  if (!conn) return
  switch (kind) {
    case EventKind.Message:
      safeEmit(conn, 'message', ev[2], !!ev[3])
      break
    case EventKind.Close:
      server._connections.delete(ev[1])
      server._updateHold()
      conn._markClosed()
      safeEmit(conn, 'close', ev[2], ev[3])
      break
    case EventKind.PeerClose:
      // Every message before the peer's close frame has been handled (and could be answered):
      // only now does the connection start closing (at once for isOpen, even if the answer
      // waits behind broadcasts still being fanned out).
      conn._markPeerClosed()
      conn._native.connAnswerClose(conn.id)
      break
    case EventKind.Ping:
      safeEmit(conn, 'ping', ev[2])
      break
    case EventKind.Pong:
      safeEmit(conn, 'pong', ev[2])
      break
    case EventKind.Backpressure:
      safeEmit(conn, 'backpressure', ev[2])
      safeEmit(server, 'backpressure', conn, ev[2])
      break
    case EventKind.Drain:
      safeEmit(conn, 'drain', ev[2])
      safeEmit(server, 'connectionDrain', conn, ev[2])
      break
    case EventKind.Resync: {
      const offsets = {}
      const flat = ev[4]
      for (let i = 0; i < flat.length; i += 3) {
        // defineProperty: a topic may be named '__proto__'.
        Object.defineProperty(offsets, flat[i], { value: { offset: flat[i + 1], epoch: flat[i + 2] }, enumerable: true, writable: true, configurable: true })
      }
      const info = { dropped: ev[2], bytes: ev[3], offsets }
      safeEmit(conn, 'resync', info)
      safeEmit(server, 'resync', conn, info)
      break
    }
  }
}

module.exports = { drain }
