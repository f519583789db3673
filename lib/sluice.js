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
const { NativeServer, Priority, threadCpuTimeNs } = require('./native')

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
/** Defaults of the event thresholds (the native side holds the same values). */
const DEFAULT_HIGH_WATER_MARK = 64 * 1024
const DEFAULT_LOW_WATER_MARK = 16 * 1024
const DEFAULT_MAX_PENDING_BYTES = 64 * 1024 * 1024
/**
 * Longest run of event handling (ms) before the event loop gets a turn: timers fire at most this
 * much (plus one listener call) late during an inbound flood.
 */
const DISPATCH_SLICE_MS = 10
/** Default `maxPayload` (the native side holds the same value). */
const DEFAULT_MAX_PAYLOAD = 1024 * 1024

const KIND = {
  CONNECTION: 0,
  MESSAGE: 1,
  CLOSE: 2,
  BACKPRESSURE: 3,
  DRAIN: 4,
  CLOSED: 6,
  VERIFY: 7,
  HANDSHAKE_FAILED: 8,
  PING: 9,
  PONG: 10,
  SENT: 11,
  PUBLISHED: 12,
  RESUMED: 13,
  RESYNC: 14,
  FANOUT_DRAIN: 15,
  PEER_CLOSE: 16,
}

/** Inbound events the native side passes on only while JavaScript listens (interest bits). */
const INTEREST = { message: 1, ping: 2, pong: 4 }

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
  onOverflow: [['terminate', 'drop', 'resync']],
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
  laggingKernelLimit: ['int', 0, 2 ** 31 - 1],
  workerNice: ['int', 0, 19],
  noServer: ['boolean'],
  verifyClient: ['function'],
  handleProtocols: ['function'],
  allowedOrigins: ['strings'],
  reusePort: ['boolean'],
  cluster: ['cluster'],
  maxPendingBytes: ['int', 1, MAX_BYTES],
  pendingHighWaterMark: ['int', 0, MAX_BYTES],
  defaultTtl: ['int', 0, MAX_MS],
  maxInboundBytesPerSecond: ['int', 0, MAX_BYTES],
  maxInboundFramesPerSecond: ['int', 0, 1e9],
  inboundRateWindow: ['int', 1, MAX_MS],
  maxPartialMessageBytes: ['int', 0, MAX_BYTES],
}

/** `cluster: { redis, prefix, criticalQueue }`, checked; returns the native form. */
function clusterOption(value) {
  const fail = (Class, message) => sluiceError(Class, 'ERR_SLUICE_INVALID_OPTION', `cluster.${message}`)
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_OPTION', 'cluster must be an object: { redis, prefix?, criticalQueue? }')
  }
  for (const key of Object.keys(value)) {
    if (!['redis', 'prefix', 'criticalQueue'].includes(key)) {
      throw sluiceError(TypeError, 'ERR_SLUICE_UNKNOWN_OPTION', `unknown option 'cluster.${key}'`)
    }
  }
  const { redis, prefix, criticalQueue } = value
  const sharded = Array.isArray(redis)
  const urls = sharded ? redis : [redis]
  if (urls.length === 0 || !urls.every((u) => typeof u === 'string' && /^rediss?:\/\/./.test(u))) {
    throw fail(TypeError, "redis must be a 'redis://host:port' URL, or an array of them (the seed nodes of a Redis Cluster)")
  }
  if (prefix !== undefined && (typeof prefix !== 'string' || prefix.length === 0)) {
    throw fail(TypeError, 'prefix must be a non-empty string')
  }
  if (criticalQueue !== undefined && (!Number.isInteger(criticalQueue) || criticalQueue < 0 || criticalQueue > 1e6)) {
    throw fail(RangeError, `criticalQueue must be a whole number from 0 to 1000000, got ${criticalQueue}`)
  }
  return { urls, sharded, prefix, criticalQueue }
}

/** Options handled here, not by the native side. */
const JS_ONLY = ['noServer', 'verifyClient', 'handleProtocols']

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
    } else if (kind === 'string' || kind === 'boolean' || kind === 'function') {
      if (typeof value !== kind) {
        throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_OPTION', `${name} must be a ${kind}, got ${typeof value}`)
      }
    } else if (kind === 'cluster') {
      out[name] = clusterOption(value)
      continue
    } else if (kind === 'strings') {
      if (!Array.isArray(value) || !value.every((v) => typeof v === 'string' && v.length > 0)) {
        throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_OPTION', `${name} must be an array of non-empty strings`)
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
  const maxPending = out.maxPendingBytes ?? DEFAULT_MAX_PENDING_BYTES
  if (out.pendingHighWaterMark !== undefined && out.pendingHighWaterMark > maxPending) {
    throw sluiceError(RangeError, 'ERR_SLUICE_OUT_OF_RANGE', `pendingHighWaterMark (${out.pendingHighWaterMark}) must not exceed maxPendingBytes (${maxPending})`)
  }
  const maxPayload = out.maxPayload ?? DEFAULT_MAX_PAYLOAD
  if (out.maxPartialMessageBytes !== undefined && out.maxPartialMessageBytes !== 0 && out.maxPartialMessageBytes < maxPayload) {
    throw sluiceError(RangeError, 'ERR_SLUICE_OUT_OF_RANGE', `maxPartialMessageBytes (${out.maxPartialMessageBytes}) must be 0 or at least maxPayload (${maxPayload}): a message of maxPayload must fit`)
  }
  if (out.noServer) {
    const own = ['host', 'port', 'path'].filter((n) => out[n] !== undefined)
    if (own.length > 0) {
      throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_OPTIONS', `noServer excludes ${own.join(', ')}: a noServer server has no listener of its own`)
    }
  }
  return out
}

/** The options object the native constructor takes. */
function nativeOptions(options) {
  const out = { ...options }
  for (const name of JS_ONLY) delete out[name]
  if (options.verifyClient || options.handleProtocols) out.askJs = true
  return out
}

/** Completes the request object of sluice's own listener with the `IncomingMessage` fields
 * applications read most: `method`, `rawHeaders`, `socket.remoteAddress` / `remotePort`. */
function ownRequest(request) {
  request[kOwnRequest] = true
  request.method = 'GET'
  request.rawHeaders = flatHeaders(request.headers)
  request.socket = { remoteAddress: request.remoteAddress, remotePort: request.remotePort }
  return request
}

/**
 * The headers of a request Node parsed, as sluice checks them: `rawHeaders` (repeats kept), cut
 * to the http server's `maxHeadersCount` as Node cuts `req.headers` (but not `rawHeaders`), so
 * that sluice judges the request the application sees; never cut when that would hide an
 * `Origin` from `allowedOrigins`.
 */
function requestHeaders(req, socket) {
  const raw = req.rawHeaders || flatHeaders(req.headers)
  const max = socket && socket.server ? socket.server.maxHeadersCount : undefined
  if (!(Number.isInteger(max) && max > 0 && raw.length > 2 * max)) return raw
  // An Origin past the cut is still checked against allowedOrigins: the whole list then.
  for (let i = 2 * max; i < raw.length; i += 2) {
    const name = String(raw[i]).toLowerCase()
    if (name === 'origin' || name === 'sec-websocket-origin') return raw
  }
  return raw.slice(0, 2 * max)
}

/** Shaped like an upgrade request: an object with a `url` string and a `headers` object. */
function isRequest(req) {
  return req !== null && typeof req === 'object' && typeof req.url === 'string' && req.headers !== null && typeof req.headers === 'object'
}

/** `rawHeaders` of a request object sluice built (own listener): Node's flat form. */
function flatHeaders(headers) {
  const out = []
  for (const [name, value] of Object.entries(headers)) out.push(name, value)
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

/** An error thrown by the native side as "ERR_SLUICE_X: message", with its code. */
function nativeError(err) {
  const m = /^(ERR_SLUICE_[A-Z_]+): (.*)$/s.exec(err && err.message)
  return m ? sluiceError(Error, m[1], m[2]) : err
}

/**
 * The native form of a message's options: `{ key, ttl }`, and `except` where `withExcept`
 * (broadcast, publish). `key`: a non-empty string of at most 1024 bytes; `ttl`: whole ms from 0
 * (no expiry) to 2^31 - 1; `except`: a Connection of this server or an array of them. Returns
 * undefined when there is nothing to pass.
 */
function toMessageOptions(options, server, withExcept) {
  if (options === undefined || options === null) return undefined
  const names = withExcept ? '{ key, ttl, except }' : '{ key, ttl }'
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_OPTIONS', `options must be an object such as ${names}, got ${Array.isArray(options) ? 'an array' : typeof options}`)
  }
  for (const name of Object.keys(options)) {
    if (name !== 'key' && name !== 'ttl' && !(withExcept && name === 'except')) {
      throw sluiceError(TypeError, 'ERR_SLUICE_UNKNOWN_OPTION', `unknown option '${name}'`)
    }
  }
  const { key, ttl, except } = options
  const out = {}
  if (key !== undefined) {
    if (typeof key !== 'string' || key.length === 0 || Buffer.byteLength(key) > MAX_KEY_BYTES) {
      throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_KEY', `key must be a non-empty string of at most ${MAX_KEY_BYTES} bytes`)
    }
    out.key = key
  }
  if (ttl !== undefined) {
    if (typeof ttl !== 'number' || Number.isNaN(ttl)) {
      throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_TTL', `ttl must be a number of ms, got ${typeof ttl}`)
    }
    if (!Number.isInteger(ttl) || ttl < 0 || ttl > MAX_MS) {
      throw sluiceError(RangeError, 'ERR_SLUICE_INVALID_TTL', `ttl must be a whole number of ms from 0 (no expiry) to ${MAX_MS}, got ${ttl}`)
    }
    out.ttl = ttl
  }
  if (except !== undefined && except !== null) {
    const list = Array.isArray(except) ? except : [except]
    const ids = []
    for (const c of list) {
      if (!(c instanceof Connection) || c._server !== server) {
        throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_EXCEPT', 'except must be a Connection of this server, or an array of them')
      }
      ids.push(c.id)
    }
    if (ids.length > 0) out.except = ids
  }
  return out
}

function toTopic(topic) {
  if (typeof topic !== 'string' || topic.length === 0) {
    throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_TOPIC', 'topic must be a non-empty string')
  }
  return topic
}

function controlPayload(data) {
  if (data === undefined) return EMPTY
  if (typeof data === 'number') data = String(data)
  const out = typeof data === 'string' ? Buffer.from(data) : toBytes(data)
  if (out.byteLength > MAX_CONTROL_PAYLOAD) {
    throw sluiceError(RangeError, 'ERR_SLUICE_INVALID_DATA', `ping/pong data must be at most ${MAX_CONTROL_PAYLOAD} bytes, got ${out.byteLength}`)
  }
  return out
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
  constructor(native, request, server) {
    super()
    this._native = native
    this._server = server
    /** Server-unique id of this connection. */
    this.id = native.id
    /**
     * The upgrade request: `{ url, method, headers, remoteAddress, remotePort, socket }` from
     * sluice's own listener, or the `http.IncomingMessage` given to `handleUpgrade`.
     */
    this.request = request
    this.remoteAddress = request.remoteAddress ?? (request.socket && request.socket.remoteAddress)
    /** The negotiated subprotocol, `''` if none. */
    this.protocol = native.protocol
    this._closed = false
    /** The peer's close frame was reached in the event stream (the connection is closing). */
    this._peerClosed = false
    // The native side starts with messages on, so that none is lost before the 'connection'
    // handlers have added their listeners; `_syncInterest` then tells it what is listened to.
    this._interest = 0
    this._nativeInterest = INTEREST.message
    this.on('newListener', (event) => {
      const bit = INTEREST[event]
      if (bit && !(this._interest & bit)) {
        this._interest |= bit
        this._syncInterest()
      }
    })
    this.on('removeListener', (event) => {
      const bit = INTEREST[event]
      if (bit && this.listenerCount(event) === 0) {
        this._interest &= ~bit
        this._syncInterest()
      }
    })
  }

  /** Tells the native side which inbound events to pass on (none: they never wake this thread). */
  _syncInterest() {
    if (this._interest !== this._nativeInterest) {
      this._nativeInterest = this._interest
      this._native.setInterest(this._interest)
    }
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
    return !this._closed && !this._peerClosed && this._native.isOpen
  }

  /**
   * Queues `data` (string: text frame; binary: binary frame) at `priority`.
   * Returns false if it was not queued: dropped by policy, overflow, or the connection is closed.
   * `callback(err)` is called once: without an error when the whole frame has been handed to the
   * kernel, or with an `ERR_SLUICE_DROPPED` error when it was dropped (policy, overflow, closed).
   */
  send(data, priority, options, callback) {
    // send(data, cb), send(data, priority, cb), send(data, priority, options, cb)
    if (typeof priority === 'function' && options === undefined) {
      callback = priority
      priority = undefined
    } else if (typeof options === 'function' && callback === undefined) {
      callback = options
      options = undefined
    }
    const p = toPriority(priority)
    const bytes = toBytes(data)
    const opts = toMessageOptions(options, this._server, false)
    if (callback !== undefined && typeof callback !== 'function') {
      throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_CALLBACK', 'callback must be a function')
    }
    const ack = callback ? this._server._track(callback) : undefined
    return bytes === null ? this._native.sendText(data, p, ack, opts) : this._native.send(bytes, p, false, ack, opts)
  }

  /**
   * How late this connection is: the age in ms of the oldest message queued for it and not yet
   * written, 0 when nothing waits. Read synchronously, like `bufferedAmount`.
   */
  get lag() {
    return this._native.lag
  }

  /** Messages queued for this connection whose `ttl` ran out before they were written. */
  get expired() {
    return this._native.expired
  }

  /** Queued messages of this connection replaced by a newer one with the same `key`. */
  get replaced() {
    return this._native.replaced
  }

  /** Sends a ping (at most 125 bytes of data); the peer's pong arrives as a 'pong' event. */
  ping(data) {
    return this._native.ping(controlPayload(data), false)
  }

  /** Sends an unsolicited pong (at most 125 bytes of data). */
  pong(data) {
    return this._native.ping(controlPayload(data), true)
  }

  /**
   * Subscribes to `topic`. Returns false if already subscribed or closed.
   * With `{ since: { offset, epoch } }` on a topic with history: first the messages published
   * after `offset` (if that epoch's history still holds them all), then the live ones, with no
   * gap and no duplicate. Returns a Promise of `{ recovered, offset, epoch }`: `recovered` false
   * means the history could not fill the gap (another epoch, or too old an offset) and the
   * connection is subscribed from now on: send it a snapshot. `offset` is the topic's latest.
   */
  subscribe(topic, options) {
    const t = toTopic(topic)
    if (options === undefined) return this._native.subscribe(t)
    if (options === null || typeof options !== 'object' || options.since === null || typeof options.since !== 'object') {
      throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_OPTIONS', 'options must be { since: { offset, epoch } }')
    }
    const { offset, epoch } = options.since
    if (!Number.isInteger(offset) || offset < 0 || typeof epoch !== 'string') {
      throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_OPTIONS', 'since must be { offset: a whole number >= 0, epoch: a string }')
    }
    const server = this._server
    if (!server._histories.has(t)) {
      return Promise.reject(sluiceError(Error, 'ERR_SLUICE_NO_HISTORY', `topic '${t}' has no history (server.topic(name, { history }))`))
    }
    const token = server._nextPending++
    let r
    try {
      r = this._native.resume(t, offset, epoch, token)
    } catch (err) {
      return Promise.reject(nativeError(err))
    }
    if (r.pending) return server._awaitPending(token)
    return Promise.resolve({ recovered: r.recovered, offset: r.offset, epoch: r.epoch })
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
    /** Handshakes JavaScript takes part in, by token: `{ req, cb }`. */
    this._handshakes = new Map()
    /** Callbacks of `conn.send(.., callback)` by token. */
    this._acks = new Map()
    this._nextAck = 1
    this._holding = false
    /** `[httpServer, listener]` pairs added by `attach`. */
    this._attached = []
    /** Topics configured with a history. */
    this._histories = new Set()
    /** Promises of history publishes and resumes answered by events (cluster mode), by token. */
    this._pending = new Map()
    this._nextPending = 1
    /** `drained()`'s promise while one waits, and its resolver. */
    this._drained = null
    this._resolveDrained = null
    /** Event batches from the native side not yet handled, oldest first (see `_drain`). */
    this._batches = []
    /** Next event of `_batches[0]`. */
    this._batchPos = 0
    this._draining = false
    this._drainLater = () => this._drain()
    this._native = new NativeServer(nativeOptions(this._options), (events) => this._dispatch(events))
  }

  /** Binds and starts accepting. Resolves with `{ port, address, family }`. */
  listen() {
    if (this._options.noServer) {
      return Promise.reject(sluiceError(Error, 'ERR_SLUICE_NO_SERVER', 'a noServer server does not listen: hand it upgrades with handleUpgrade() or attach()'))
    }
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

  /**
   * Takes over a socket from Node's http server in its `'upgrade'` event, as `ws`'s
   * `handleUpgrade` does: the descriptor is duplicated into sluice and Node's handle is destroyed
   * (without a FIN), so from then on the connection costs the event loop nothing. `head` and any
   * bytes Node had already buffered go to sluice. The handshake (checks, `verifyClient`,
   * `allowedOrigins`, the 101) happens on sluice's threads; `callback(conn, req)` is called when
   * the connection is open, after `'connection'` has been emitted. If the handshake fails (bad
   * request, refused, client gone) neither happens.
   * Throws `ERR_SLUICE_ENCRYPTED_SOCKET` for a TLS socket, `ERR_SLUICE_SOCKET_TAKEN` for a socket
   * already taken over, `ERR_SLUICE_INVALID_SOCKET` for one without a descriptor.
   */
  handleUpgrade(req, socket, head, callback) {
    this._handOver(req, socket, head, callback, undefined)
  }

  /**
   * `handleUpgrade`, with the JavaScript hooks' answers already known: `preset` is `{ verdict,
   * protocol }`, `verdict` as `verifyClient` returns it and `protocol` the subprotocol to answer
   * with (sluice/ws decides while Node still owns the socket, as ws does). The hooks are then not
   * called again for this request. A `preset` needs `askJs` (a `verifyClient` or
   * `handleProtocols` option): the verify event is where it is applied.
   */
  _handOver(req, socket, head, callback, preset) {
    if (!isRequest(req)) {
      throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_ARG', 'req must be the http.IncomingMessage of the upgrade request')
    }
    if (socket === null || typeof socket !== 'object' || typeof socket.destroy !== 'function') {
      throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_SOCKET', 'socket must be the net.Socket of the upgrade request')
    }
    if (head !== undefined && head !== null && !(head instanceof Uint8Array)) {
      throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_ARG', 'head must be a Buffer')
    }
    if (callback !== undefined && typeof callback !== 'function') {
      throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_CALLBACK', 'callback must be a function')
    }
    if (socket[kTakenOver]) {
      throw sluiceError(Error, 'ERR_SLUICE_SOCKET_TAKEN', 'server.handleUpgrade() was called more than once with the same socket, possibly due to a misconfiguration')
    }
    if (socket.encrypted) {
      throw sluiceError(Error, 'ERR_SLUICE_ENCRYPTED_SOCKET', 'sluice cannot take over a TLS socket (its bytes are ciphertext): terminate TLS in a proxy in front of Node and let it forward plain HTTP (see the README, "Behind a TLS proxy")')
    }
    const fd = socket._handle && socket._handle.fd
    if (typeof fd !== 'number' || fd < 0 || socket.destroyed) {
      throw sluiceError(Error, 'ERR_SLUICE_INVALID_SOCKET', 'the socket has no open file descriptor (destroyed, or not a TCP socket)')
    }
    if (this._state === 'closing' || this._state === 'closed') {
      // Not taken over: Node answers and ends it.
      socket.end('HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n')
      return
    }
    // Bytes Node read after the upgrade event and has not delivered (nothing, when this runs in
    // the 'upgrade' event's own tick; a caller that awaited something first may have some).
    const buffered = socket.readableLength > 0 ? socket.read() : null
    let bytes = head && head.length ? head : EMPTY
    if (buffered && buffered.length) bytes = Buffer.concat([bytes, buffered])
    // Read (and so cache) the peer's address while Node still has the handle.
    void socket.remoteAddress
    let token
    try {
      token = this._native.adopt(fd, req.method || '', req.httpVersion || '', req.url, requestHeaders(req, socket), bytes)
    } catch (err) {
      throw sluiceError(Error, 'ERR_SLUICE_TAKEOVER_FAILED', err.message)
    }
    socket[kTakenOver] = true
    this._handshakes.set(token, { req, callback, preset })
    this._updateHold()
    // Node closes its descriptor; ours keeps the connection open, so no FIN reaches the peer.
    socket.destroy()
  }

  /**
   * Runs the checks `handleUpgrade` would (sluice/ws's hook to call `verifyClient` before the
   * hand-over, as ws does): the offered subprotocols of a valid upgrade request, or null.
   */
  _checkUpgrade(req, socket) {
    if (!isRequest(req)) return null
    const headers = requestHeaders(req, socket).map(String)
    return this._native.checkUpgrade(req.method || '', req.httpVersion || '', req.url, headers)
  }

  /**
   * Hands the upgrade requests of an http (or Express, Fastify...) server to sluice, on `path`
   * only if given (the query string is ignored). HTTP routes keep working on the same port.
   * Requests for another path are left to other 'upgrade' listeners, or answered 404 if there
   * are none. `close()` removes the listener. Returns this server.
   */
  attach(httpServer, { path } = {}) {
    if (httpServer === null || typeof httpServer !== 'object' || typeof httpServer.on !== 'function') {
      throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_ARG', 'attach() takes an http.Server')
    }
    if (path !== undefined && (typeof path !== 'string' || !path.startsWith('/'))) {
      throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_OPTION', `path must be a string starting with '/', got ${typeof path === 'string' ? `'${path}'` : typeof path}`)
    }
    if (httpServer instanceof require('tls').Server) {
      throw sluiceError(Error, 'ERR_SLUICE_ENCRYPTED_SOCKET', 'sluice cannot take over TLS sockets: attach it to a plain http server behind a TLS-terminating proxy (see the README, "Behind a TLS proxy")')
    }
    if (this._state === 'closing' || this._state === 'closed') {
      throw sluiceError(Error, 'ERR_SLUICE_CLOSED', `server is ${this._state}`)
    }
    const listener = (req, socket, head) => {
      if (path !== undefined && req.url.split('?')[0] !== path) {
        if (httpServer.listenerCount('upgrade') > 1) return
        socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n')
        return
      }
      try {
        this.handleUpgrade(req, socket, head)
      } catch (err) {
        socket.destroy()
        if (this.listenerCount('error') > 0) safeEmit(this, 'error', err)
      }
    }
    httpServer.on('upgrade', listener)
    this._attached.push([httpServer, listener])
    return this
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
   * Sends `data` to every open connection (but those in `options.except`). The payload is copied
   * once and framed once; the fan-out runs on sluice's threads. Like `Writable#write`, returns
   * false once the broadcasts waiting for fan-out are at or above `pendingHighWaterMark`: the
   * message is queued all the same, and the server emits `'drain'` when the backlog is back
   * below (`await server.drained()`). Also false when it was refused: past `maxPendingBytes`
   * (Normal and Low only; counted in `metrics().fanoutRejected`) or while the server closes.
   * `options`: `{ key, ttl, except }`.
   */
  broadcast(data, priority, options) {
    const p = toPriority(priority)
    const bytes = toBytes(data)
    const opts = toMessageOptions(options, this, true)
    return bytes === null ? this._native.broadcastText(data, p, opts) : this._native.broadcast(bytes, p, false, opts)
  }

  /** Sends `data` to the connections subscribed to `topic`; returns as `broadcast`. */
  publish(topic, data, priority, options) {
    const t = toTopic(topic)
    const p = toPriority(priority)
    const bytes = toBytes(data)
    const opts = toMessageOptions(options, this, true)
    if (this._histories.has(t)) {
      if (opts && opts.except && this._options.cluster) {
        // Every node, this one included, delivers such a message when Redis hands it back numbered.
        throw sluiceError(TypeError, 'ERR_SLUICE_UNSUPPORTED', 'except is not supported on a topic with history in cluster mode')
      }
      // A topic with history: the message's number. Alone, known at once; with cluster, Redis
      // numbers it and the answer comes back as an event (no client socket is waited on).
      const token = this._nextPending++
      const r = bytes === null ? this._native.publishHistoryText(t, data, p, opts, token) : this._native.publishHistory(t, bytes, p, false, opts, token)
      if (!r) {
        return Promise.reject(sluiceError(Error, 'ERR_SLUICE_NOT_QUEUED', 'not published: the server is closing, or maxPendingBytes of broadcasts already wait for fan-out'))
      }
      if (r.pending) return this._awaitPending(token)
      return Promise.resolve({ offset: r.offset, epoch: r.epoch })
    }
    return bytes === null ? this._native.publishText(t, data, p, opts) : this._native.publish(t, bytes, p, false, opts)
  }

  /** Bytes waiting for the fan-out: the frames of pending broadcasts plus 320 bytes each. */
  get pendingBytes() {
    return this._native.pendingBytes
  }

  /**
   * Resolves once the broadcasts waiting for fan-out are below `pendingHighWaterMark` (at once if
   * they already are), or when the server closes. The idiom for a producer in a loop:
   * `if (!server.broadcast(msg)) await server.drained()`.
   */
  drained() {
    if (this._state === 'closed' || this._native.wantDrain()) return Promise.resolve()
    if (!this._drained) {
      this._drained = new Promise((resolve) => {
        this._resolveDrained = resolve
      })
    }
    return this._drained
  }

  /** The backlog fell below the mark: emit `'drain'` and settle `drained()`. */
  _fanoutDrained() {
    // The event may be older than the current wait (the backlog rose above the mark again since
    // it was sent): then wantDrain() re-arms and the next 'drain' settles the promise.
    if (this._resolveDrained && this._native.wantDrain()) {
      const resolve = this._resolveDrained
      this._drained = null
      this._resolveDrained = null
      resolve()
    }
    safeEmit(this, 'drain')
  }

  /**
   * Configures `topic`. `history: { size, bytes, ttl }` keeps its latest messages, numbered
   * (offsets from 1, in an epoch that is new for each configuration and each process), for
   * `conn.subscribe(topic, { since })`; bounded by count (default 1000), encoded bytes (default
   * 8 MiB) and age in ms (default 300000), whichever bites first. `offsets: 'prefix'` makes each
   * message carry its offset for the client to remember: 8 bytes big-endian before a binary
   * payload, the decimal number and a space before a text one. Returns `{ epoch }`.
   * `publish` on such a topic returns a Promise of `{ offset, epoch }`.
   */
  topic(name, options = {}) {
    const t = toTopic(name)
    if (options === null || typeof options !== 'object') {
      throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_OPTIONS', 'options must be an object: { history, offsets }')
    }
    for (const k of Object.keys(options)) {
      if (k !== 'history' && k !== 'offsets') throw sluiceError(TypeError, 'ERR_SLUICE_UNKNOWN_OPTION', `unknown option '${k}'`)
    }
    const { history, offsets = 'none' } = options
    if (offsets !== 'none' && offsets !== 'prefix') {
      throw sluiceError(RangeError, 'ERR_SLUICE_INVALID_OPTION', `offsets must be 'none' or 'prefix', got ${String(offsets)}`)
    }
    if (history === undefined) return { epoch: null }
    if (history === null || typeof history !== 'object') {
      throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_OPTION', 'history must be an object: { size, bytes, ttl }')
    }
    const bound = (name, max) => {
      const v = history[name]
      if (v === undefined) return undefined
      if (!Number.isInteger(v) || v < 1 || v > max) {
        throw sluiceError(RangeError, 'ERR_SLUICE_OUT_OF_RANGE', `history.${name} must be a whole number from 1 to ${max}, got ${v}`)
      }
      return v
    }
    for (const k of Object.keys(history)) {
      if (!['size', 'bytes', 'ttl'].includes(k)) throw sluiceError(TypeError, 'ERR_SLUICE_UNKNOWN_OPTION', `unknown option 'history.${k}'`)
    }
    let epoch
    try {
      epoch = this._native.configureTopic(t, bound('size', 2 ** 31 - 1), bound('bytes', MAX_BYTES), bound('ttl', MAX_MS), offsets === 'prefix')
    } catch (err) {
      throw nativeError(err)
    }
    this._histories.add(t)
    // With cluster the epoch is Redis's, known from the first publish on.
    return { epoch: epoch || null }
  }

  /** A promise the native side settles later with a `published` or `resumed` event. */
  _awaitPending(token) {
    return new Promise((resolve, reject) => this._pending.set(token, { resolve, reject }))
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
    const m = this._native.metrics()
    if (m.cluster === undefined) m.cluster = null
    return m
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
    for (const [httpServer, listener] of this._attached) httpServer.removeListener('upgrade', listener)
    this._attached = []
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

  /** Registers a send callback; returns its token. */
  _track(callback) {
    const token = this._nextAck++
    this._acks.set(token, callback)
    return token
  }

  /** Open connections and handshakes in progress keep the process alive, as Node's sockets do. */
  _updateHold() {
    const holding = this._connections.size + this._handshakes.size > 0
    if (holding !== this._holding && this._state !== 'closed') {
      this._holding = holding
      this._native.hold(holding)
    }
  }

  /**
   * The subprotocol to answer with (undefined: none) for the `protocols` a request offers: the
   * `handleProtocols` hook's choice, else the client's first. Throws ERR_SLUICE_INVALID_PROTOCOL
   * for a choice that was not offered, unless the hook is sluice/ws's (marked `kAnyProtocol`),
   * whose answer is taken as ws takes it.
   */
  _chooseProtocol(protocols, req) {
    if (protocols.length === 0) return undefined
    const { handleProtocols } = this._options
    if (!handleProtocols) return protocols[0]
    const chosen = handleProtocols(new Set(protocols), req)
    if (handleProtocols[kAnyProtocol]) return chosen ? String(chosen) : undefined
    if (chosen === false) return undefined
    if (!protocols.includes(chosen)) {
      throw sluiceError(Error, 'ERR_SLUICE_INVALID_PROTOCOL', `handleProtocols must return one of the offered protocols or false, got ${typeof chosen === 'string' ? `'${chosen}'` : typeof chosen}`)
    }
    return chosen
  }

  /** A `verifyClient` / `handleProtocols` hook threw (the client gets 500): an 'error' event,
   * with code ERR_SLUICE_VERIFY_FAILED unless it has one, if anyone listens. */
  _hookFailed(err) {
    if (this.listenerCount('error') === 0) return
    if (!err || typeof err !== 'object') err = new Error(String(err))
    if (!err.code) err.code = 'ERR_SLUICE_VERIFY_FAILED'
    safeEmit(this, 'error', err)
  }

  /** Runs `verifyClient` and `handleProtocols` for a handshake and answers the native side. */
  async _verify(token, request, protocols) {
    let entry = this._handshakes.get(token)
    if (!entry) {
      // From sluice's own listener: a request object of our own, kept for 'connection'.
      entry = { req: ownRequest(request), callback: undefined }
      this._handshakes.set(token, entry)
      this._updateHold()
    }
    const req = entry.req
    const preset = entry.preset
    let status = 0
    let protocol
    let headers
    let body
    try {
      const { verifyClient } = this._options
      if (verifyClient || preset) {
        const verdict = preset ? preset.verdict : await verifyClient(req)
        if (verdict === false) {
          status = 401
        } else if (verdict !== null && typeof verdict === 'object') {
          status = verdict.code === undefined ? 401 : verdict.code
          if (!Number.isInteger(status) || status < 400 || status > 599) {
            throw sluiceError(RangeError, 'ERR_SLUICE_INVALID_VERDICT', `verifyClient's code must be a whole number from 400 to 599, got ${verdict.code}`)
          }
          body = verdict.message === undefined ? undefined : String(verdict.message)
          headers = verdict.headers ? flatHeaders(verdict.headers).map(String) : undefined
        } else if (verdict !== true) {
          throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_VERDICT', `verifyClient must return (or resolve to) true, false or { code, message }, got ${verdict === null ? 'null' : typeof verdict}`)
        }
      }
      if (status === 0) protocol = preset ? preset.protocol : this._chooseProtocol(protocols, req)
    } catch (err) {
      status = 500
      protocol = undefined
      headers = undefined
      body = undefined
      this._hookFailed(err)
    }
    if (this._state === 'closed') return
    try {
      this._native.verifyReply(token, status, protocol, headers, body)
    } catch (err) {
      // Headers the native side refuses (CR/LF in a value...): refuse the upgrade plainly.
      this._native.verifyReply(token, 500)
      if (this.listenerCount('error') > 0) safeEmit(this, 'error', sluiceError(Error, 'ERR_SLUICE_INVALID_VERDICT', err.message))
    }
  }

  /**
   * Receives a batch of events from the native side (its thread-safe call). Batches are handled
   * in order by `_drain`.
   */
  _dispatch(events) {
    this._batches.push(events)
    if (!this._draining) this._drain()
  }

  /**
   * Handles events for at most DISPATCH_SLICE_MS, then lets the event loop run (timers, I/O) and
   * goes on from a setImmediate. After the batch of the native side's thread-safe call, the next
   * batches (1,024 events, 1 MiB of inbound data at most each) are taken with `takeEvents()` until
   * one is empty; only then does the native side call again. So however long an inbound flood
   * lasts, and however slow the listeners, the server's own timers keep firing; meanwhile the
   * native queue fills up, its readers pause, and TCP pushes back on the clients.
   */
  _drain() {
    this._draining = true
    const deadline = performance.now() + DISPATCH_SLICE_MS
    let handled = 0
    let idle = false
    try {
      for (;;) {
        if (this._batches.length === 0) {
          const next = this._state === 'closed' ? [] : this._native.takeEvents()
          if (next.length === 0) {
            idle = true
            break
          }
          this._batches.push(next)
        }
        const batch = this._batches[0]
        if (this._batchPos === batch.length) {
          this._batches.shift()
          this._batchPos = 0
          continue
        }
        this._event(batch[this._batchPos++])
        if ((++handled & 15) === 0 && performance.now() > deadline) break
      }
    } finally {
      // Also after an exception thrown out of a handler: delivery must not stall.
      if (idle) this._draining = false
      else setImmediate(this._drainLater)
    }
  }

  _event(ev) {
    const kind = ev[0]
    if (kind === KIND.CONNECTION) {
      const token = ev[4]
      const entry = token ? this._handshakes.get(token) : undefined
      if (entry) this._handshakes.delete(token)
      const req = entry ? entry.req : ownRequest(ev[3])
      const conn = new Connection(ev[2], req, this)
      this._connections.set(ev[1], conn)
      this._updateHold()
      safeEmit(this, 'connection', conn, req)
      if (entry && entry.callback) {
        try {
          entry.callback(conn, req)
        } catch (err) {
          process.nextTick(() => {
            throw err
          })
        }
      }
      conn._syncInterest()
      return
    }
    if (kind === KIND.VERIFY) {
      this._verify(ev[1], ev[2], ev[3])
      return
    }
    if (kind === KIND.HANDSHAKE_FAILED) {
      this._handshakes.delete(ev[1])
      this._updateHold()
      return
    }
    if (kind === KIND.PUBLISHED || kind === KIND.RESUMED) {
      const p = this._pending.get(ev[1])
      if (p) {
        this._pending.delete(ev[1])
        if (kind === KIND.RESUMED) p.resolve({ recovered: ev[2], offset: ev[3], epoch: ev[4] })
        else if (ev[4]) p.reject(sluiceError(Error, ev[4], 'not published: Redis could not be reached, and only Critical messages are held during an outage'))
        else p.resolve({ offset: ev[2], epoch: ev[3] })
      }
      return
    }
    if (kind === KIND.SENT) {
      const callback = this._acks.get(ev[2])
      if (callback) {
        this._acks.delete(ev[2])
        const err =
          ev[3] === 0
            ? null
            : ev[3] === 2
              ? sluiceError(Error, 'ERR_SLUICE_REPLACED', 'the message was replaced, before it was written, by a newer one with the same key')
              : ev[3] === 3
                ? sluiceError(Error, 'ERR_SLUICE_EXPIRED', 'the message was not written: its ttl ran out while it waited in the queue')
                : sluiceError(Error, 'ERR_SLUICE_DROPPED', 'the message was dropped before it was written: the connection closed, or the policy refused it')
        try {
          callback(err)
        } catch (e) {
          process.nextTick(() => {
            throw e
          })
        }
      }
      return
    }
    if (kind === KIND.CLOSED) {
      this._finishClose()
      return
    }
    if (kind === KIND.FANOUT_DRAIN) {
      this._fanoutDrained()
      return
    }
    const conn = this._connections.get(ev[1])
    if (!conn) return
    switch (kind) {
      case KIND.MESSAGE:
        safeEmit(conn, 'message', ev[2], !!ev[3])
        break
      case KIND.CLOSE:
        this._connections.delete(ev[1])
        this._updateHold()
        conn._closed = true
        safeEmit(conn, 'close', ev[2], ev[3])
        break
      case KIND.PEER_CLOSE:
        // Every message before the peer's close frame has been handled (and could be answered):
        // only now does the connection start closing (at once for isOpen, even if the answer
        // waits behind broadcasts still being fanned out).
        conn._peerClosed = true
        conn._native.answerClose()
        break
      case KIND.PING:
        safeEmit(conn, 'ping', ev[2])
        break
      case KIND.PONG:
        safeEmit(conn, 'pong', ev[2])
        break
      case KIND.BACKPRESSURE:
        safeEmit(conn, 'backpressure', ev[2])
        safeEmit(this, 'backpressure', conn, ev[2])
        break
      case KIND.DRAIN:
        safeEmit(conn, 'drain', ev[2])
        safeEmit(this, 'connectionDrain', conn, ev[2])
        break
      case KIND.RESYNC: {
        const offsets = {}
        const flat = ev[4]
        for (let i = 0; i < flat.length; i += 3) {
          // defineProperty: a topic may be named '__proto__'.
          Object.defineProperty(offsets, flat[i], { value: { offset: flat[i + 1], epoch: flat[i + 2] }, enumerable: true, writable: true, configurable: true })
        }
        const info = { dropped: ev[2], bytes: ev[3], offsets }
        safeEmit(conn, 'resync', info)
        safeEmit(this, 'resync', conn, info)
        break
      }
    }
  }

  _finishClose() {
    if (this._state === 'closed') return
    this._state = 'closed'
    this._address = null
    this._native.destroy()
    // Every connection is gone and its frames accounted for; anything still unanswered was lost
    // with the runtime.
    const acks = [...this._acks.values()]
    this._acks.clear()
    this._handshakes.clear()
    for (const p of this._pending.values()) {
      p.reject(sluiceError(Error, 'ERR_SLUICE_CLOSED', 'the server closed before Redis answered'))
    }
    this._pending.clear()
    for (const callback of acks) {
      try {
        callback(sluiceError(Error, 'ERR_SLUICE_DROPPED', 'the server closed before the message was written'))
      } catch (e) {
        process.nextTick(() => {
          throw e
        })
      }
    }
    if (this._resolveClose) this._resolveClose()
    // Nothing waits for fan-out any more: a producer awaiting drained() goes on (and learns from
    // broadcast() that the server is closed).
    if (this._resolveDrained) this._resolveDrained()
    this._drained = this._resolveDrained = null
    safeEmit(this, 'close')
  }
}

module.exports = { Server, Connection, Priority, threadCpuTimeNs }
