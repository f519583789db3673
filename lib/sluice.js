'use strict'

/**
 * sluice: the public JavaScript API.
 *
 * `Server` and `Connection` are EventEmitters over the native classes generated from `src/`
 * (see `index.d.ts`). This file validates arguments (TypeError / RangeError with a stable
 * `err.code`), turns data into the form the native side takes, and dispatches the event batches
 * that the Rust core delivers. It does no per-recipient work: a broadcast is one native call.
 */

const { EventEmitter } = require('events')
const { NativeServer, Priority, threadCpuTimeNs } = require('../index.js')

/** Largest number of bytes the sizes accept (1 TiB): far above any sane bound, below 2^53. */
const MAX_BYTES = 2 ** 40
/** Largest timer value Node itself accepts (setTimeout's 2^31 - 1 ms). */
const MAX_MS = 2 ** 31 - 1
/** Default `close()` timeout, the same as the per-connection `closeTimeout`. */
const DEFAULT_CLOSE_TIMEOUT = 5000
/** Defaults of the event thresholds (the native side holds the same values). */
const DEFAULT_HIGH_WATER_MARK = 64 * 1024
const DEFAULT_LOW_WATER_MARK = 16 * 1024

const KIND = {
  CONNECTION: 0,
  MESSAGE: 1,
  CLOSE: 2,
  BACKPRESSURE: 3,
  DRAIN: 4,
  ERROR: 5,
  CLOSED: 6,
}

function sluiceError(Class, code, message) {
  const err = new Class(message)
  err.code = code
  return err
}

// name: [kind, min, max]; kind 'int' (whole number), 'string', or an array of allowed strings.
const OPTIONS = {
  host: ['string'],
  port: ['int', 0, 65535],
  path: ['string'],
  maxBufferedAmount: ['int', 1, MAX_BYTES],
  lowPriorityLimit: ['int', 0, MAX_BYTES],
  onOverflow: [['terminate', 'drop']],
  highWaterMark: ['int', 0, MAX_BYTES],
  lowWaterMark: ['int', 0, MAX_BYTES],
  pingInterval: ['int', 0, MAX_MS],
  pongTimeout: ['int', 1, MAX_MS],
  handshakeTimeout: ['int', 1, MAX_MS],
  closeTimeout: ['int', 1, MAX_MS],
  maxPayload: ['int', 1, MAX_BYTES],
  maxConnections: ['int', 1, Infinity],
  threads: ['int', 1, 64],
  kernelUnsentLimit: ['int', 0, 2 ** 31 - 1],
  workerNice: ['int', 0, 19],
}

function validateOptions(options) {
  if (options === undefined) return {}
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_OPTIONS', 'options must be an object')
  }
  const out = {}
  for (const [name, value] of Object.entries(options)) {
    const spec = OPTIONS[name]
    if (!spec) {
      throw sluiceError(TypeError, 'ERR_SLUICE_UNKNOWN_OPTION', `unknown option '${name}'`)
    }
    if (value === undefined) continue
    const [kind, min, max] = spec
    if (Array.isArray(kind)) {
      if (typeof value !== 'string') {
        throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_OPTION', `${name} must be a string, got ${typeof value}`)
      }
      if (!kind.includes(value)) {
        throw sluiceError(RangeError, 'ERR_SLUICE_INVALID_OPTION', `${name} must be one of ${kind.map((k) => `'${k}'`).join(', ')}, got '${value}'`)
      }
    } else if (kind === 'string') {
      if (typeof value !== 'string') {
        throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_OPTION', `${name} must be a string, got ${typeof value}`)
      }
    } else {
      if (typeof value !== 'number' || Number.isNaN(value)) {
        throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_OPTION', `${name} must be a number, got ${typeof value}`)
      }
      const whole = Number.isInteger(value) || (value === Infinity && max === Infinity)
      if (!whole || value < min || value > max) {
        throw sluiceError(RangeError, 'ERR_SLUICE_OUT_OF_RANGE', `${name} must be a whole number from ${min} to ${max}, got ${value}`)
      }
    }
    out[name] = value
  }
  // "No limit" is any count no machine reaches; the native side takes it as Infinity.
  if (out.maxConnections >= MAX_BYTES) out.maxConnections = Infinity
  const high = out.highWaterMark ?? DEFAULT_HIGH_WATER_MARK
  // The default lowWaterMark follows a smaller highWaterMark down rather than conflicting with it.
  const low = out.lowWaterMark ?? Math.min(DEFAULT_LOW_WATER_MARK, high)
  if (low > high) {
    throw sluiceError(RangeError, 'ERR_SLUICE_OUT_OF_RANGE', `lowWaterMark (${low}) must not exceed highWaterMark (${high})`)
  }
  return out
}

const PRIORITIES = new Set([Priority.Critical, Priority.Normal, Priority.Low])

function toPriority(priority) {
  if (priority === undefined) return Priority.Normal
  if (typeof priority !== 'string') {
    throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_PRIORITY', `priority must be Priority.Critical, Priority.Normal or Priority.Low, got ${typeof priority}`)
  }
  if (!PRIORITIES.has(priority)) {
    throw sluiceError(RangeError, 'ERR_SLUICE_INVALID_PRIORITY', `priority must be 'critical', 'normal' or 'low', got '${priority}'`)
  }
  return priority
}

/** Returns a Uint8Array view of binary data (no copy), or null for a string. */
function toBytes(data) {
  if (typeof data === 'string') return null
  if (data instanceof Uint8Array) return data
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
  if (data instanceof ArrayBuffer || (typeof SharedArrayBuffer !== 'undefined' && data instanceof SharedArrayBuffer)) {
    return new Uint8Array(data)
  }
  throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_DATA', `data must be a string, Buffer, TypedArray, DataView or ArrayBuffer, got ${data === null ? 'null' : typeof data}`)
}

function toTopic(topic) {
  if (typeof topic !== 'string' || topic.length === 0) {
    throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_TOPIC', 'topic must be a non-empty string')
  }
  return topic
}

/** Close codes an application may send (RFC 6455 §7.4): 1000-1003, 1007-1014, 3000-4999. */
function validCloseCode(code) {
  return (
    Number.isInteger(code) &&
    ((code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006) || (code >= 3000 && code <= 4999))
  )
}

/** Emits without letting a throwing listener abort the rest of the batch; the error is rethrown
 * asynchronously, so it surfaces as an uncaught exception exactly as from any Node event. */
function safeEmit(emitter, ...args) {
  try {
    emitter.emit(...args)
  } catch (err) {
    process.nextTick(() => {
      throw err
    })
  }
}

class Connection extends EventEmitter {
  constructor(native, request) {
    super()
    this._native = native
    /** Server-unique id of this connection. */
    this.id = native.id
    /** The upgrade request: `{ url, headers, remoteAddress, remotePort }`. */
    this.request = request
    this.remoteAddress = request.remoteAddress
    this._closed = false
  }

  /** Bytes queued in sluice for this connection and not yet handed to the kernel. */
  get bufferedAmount() {
    return this._native.bufferedAmount
  }

  /** Bytes in the kernel's send queue not yet acknowledged (Linux SIOCOUTQ), or null. */
  get kernelBufferedAmount() {
    return this._native.kernelBufferedAmount
  }

  /** True until the connection starts closing. */
  get isOpen() {
    return !this._closed && this._native.isOpen
  }

  /**
   * Queues `data` (string: text frame; binary: binary frame) at `priority`.
   * Returns false if it was not queued: dropped by policy, overflow, or the connection is closed.
   */
  send(data, priority) {
    const p = toPriority(priority)
    const bytes = toBytes(data)
    return bytes === null ? this._native.sendText(data, p) : this._native.send(bytes, p, false)
  }

  subscribe(topic) {
    return this._native.subscribe(toTopic(topic))
  }

  unsubscribe(topic) {
    return this._native.unsubscribe(toTopic(topic))
  }

  /** Graceful close: the close frame follows the data already queued. */
  close(code = 1000, reason = '') {
    if (!validCloseCode(code)) {
      throw sluiceError(RangeError, 'ERR_SLUICE_INVALID_CLOSE_CODE', `invalid close code ${code}`)
    }
    if (typeof reason !== 'string') {
      throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_CLOSE_REASON', 'reason must be a string')
    }
    if (Buffer.byteLength(reason) > 123) {
      throw sluiceError(RangeError, 'ERR_SLUICE_INVALID_CLOSE_REASON', 'reason must be at most 123 bytes')
    }
    return this._native.close(code, reason)
  }

  /** Drops the TCP connection now; whatever is queued is discarded (and counted). */
  terminate() {
    return this._native.terminate()
  }
}

class Server extends EventEmitter {
  /** @param {import('../index').ServerOptions} [options] */
  constructor(options) {
    super()
    this._options = validateOptions(options)
    /** @type {Map<number, Connection>} */
    this._connections = new Map()
    this._state = 'idle'
    this._address = null
    this._closing = null
    this._resolveClose = null
    this._native = new NativeServer(this._options, (events) => this._dispatch(events))
  }

  /** Binds and starts accepting. Resolves with `{ port, address, family }`. */
  listen() {
    if (this._state !== 'idle') {
      return Promise.reject(sluiceError(Error, 'ERR_SLUICE_ALREADY_LISTENING', `server is ${this._state}`))
    }
    const r = this._native.listen()
    if (r.errorCode) {
      const err = sluiceError(Error, r.errorCode, `listen ${r.errorCode}: ${r.errorMessage}`)
      err.syscall = 'listen'
      return Promise.reject(err)
    }
    this._state = 'listening'
    this._address = { port: r.port, address: r.address, family: r.family }
    process.nextTick(() => safeEmit(this, 'listening'))
    return Promise.resolve({ ...this._address })
  }

  /** `{ port, address, family }` while listening, else null. */
  address() {
    return this._address && { ...this._address }
  }

  /** Open connections. */
  get connections() {
    return this._connections.values()
  }

  get connectionCount() {
    return this._connections.size
  }

  /**
   * Sends `data` to every open connection. The payload is copied once and framed once; the
   * fan-out runs on sluice's threads. Returns false if nothing was queued (server closing, or
   * broadcasts adding up to maxBufferedAmount - highWaterMark already waiting for fan-out: the
   * producer is ahead of the server).
   */
  broadcast(data, priority) {
    const p = toPriority(priority)
    const bytes = toBytes(data)
    return bytes === null ? this._native.broadcastText(data, p) : this._native.broadcast(bytes, p, false)
  }

  /** Sends `data` to the connections subscribed to `topic`. */
  publish(topic, data, priority) {
    const t = toTopic(topic)
    const p = toPriority(priority)
    const bytes = toBytes(data)
    return bytes === null ? this._native.publishText(t, data, p) : this._native.publish(t, bytes, p, false)
  }

  /**
   * Connections whose bufferedAmount is above `highWaterMark` right now (they had `backpressure`
   * and no `drain` yet). One atomic read: a producer can consult it before every broadcast to
   * send only as fast as the clients take, e.g. `if (server.backpressuredCount < server.connectionCount / 10)`.
   */
  get backpressuredCount() {
    return this._native.backpressuredCount
  }

  /**
   * Broadcasts and publishes accepted and not yet queued to their recipients (the fan-out runs
   * on sluice's threads). One atomic read. A producer that sends as fast as it can should wait
   * while this is above a few, so that it learns about lagging clients before it gets far ahead.
   */
  get pendingBroadcasts() {
    return this._native.pendingBroadcasts
  }

  subscriberCount(topic) {
    return this._native.subscriberCount(toTopic(topic))
  }

  /** Counters and distributions; see `Metrics` in index.d.ts. */
  metrics() {
    return this._native.metrics()
  }

  /**
   * Stops accepting, closes every connection with 1001 after its queued data, waits up to
   * `timeout` ms for their close handshakes, terminates the rest and stops sluice's threads.
   */
  close({ timeout = DEFAULT_CLOSE_TIMEOUT } = {}) {
    if (this._closing) return this._closing
    if (!Number.isInteger(timeout) || timeout < 0 || timeout > MAX_MS) {
      throw sluiceError(RangeError, 'ERR_SLUICE_OUT_OF_RANGE', `timeout must be a whole number from 0 to ${MAX_MS}, got ${timeout}`)
    }
    this._state = 'closing'
    this._closing = new Promise((resolve) => {
      this._resolveClose = resolve
    })
    this._native.close(timeout)
    return this._closing
  }

  /** Keep the process alive while listening (default). */
  ref() {
    this._native.ref()
    return this
  }

  /** Let the process exit while listening, like `net.Server#unref()`. */
  unref() {
    this._native.unref()
    return this
  }

  _dispatch(events) {
    for (const ev of events) {
      const kind = ev[0]
      if (kind === KIND.CONNECTION) {
        const conn = new Connection(ev[2], ev[3])
        this._connections.set(ev[1], conn)
        safeEmit(this, 'connection', conn, ev[3])
        continue
      }
      if (kind === KIND.CLOSED) {
        this._finishClose()
        continue
      }
      if (kind === KIND.ERROR) {
        const err = sluiceError(Error, ev[2], ev[3])
        if (this.listenerCount('error') > 0) safeEmit(this, 'error', err)
        continue
      }
      const conn = this._connections.get(ev[1])
      if (!conn) continue
      switch (kind) {
        case KIND.MESSAGE:
          safeEmit(conn, 'message', ev[2], !!ev[3])
          break
        case KIND.CLOSE:
          this._connections.delete(ev[1])
          conn._closed = true
          safeEmit(conn, 'close', ev[2], ev[3])
          break
        case KIND.BACKPRESSURE:
          safeEmit(conn, 'backpressure', ev[2])
          safeEmit(this, 'backpressure', conn, ev[2])
          break
        case KIND.DRAIN:
          safeEmit(conn, 'drain', ev[2])
          safeEmit(this, 'drain', conn, ev[2])
          break
      }
    }
  }

  _finishClose() {
    if (this._state === 'closed') return
    this._state = 'closed'
    this._address = null
    this._native.destroy()
    if (this._resolveClose) this._resolveClose()
    safeEmit(this, 'close')
  }
}

module.exports = { Server, Connection, Priority, threadCpuTimeNs }
