'use strict'

/**
 * sluice/ws: the server-side API of the `ws` package (version 8) over sluice.
 *
 *   const { WebSocketServer, WebSocket } = require('sluice/ws')   // instead of require('ws')
 *
 * `WebSocketServer` wraps a sluice `Server` (exposed as `wss.sluice`); each sluice `Connection`
 * is wrapped in a `WebSocket` (an EventEmitter). Sockets, framing, queues and fan-out stay in
 * Rust: `wss.broadcast(data, priority)` is one native call, however many clients there are.
 *
 * Semantics follow ws 8 (lib/websocket-server.js, lib/websocket.js) wherever a feature is
 * supported. A ws feature that sluice cannot provide throws an Error with
 * `err.code === 'ERR_SLUICE_WS_UNSUPPORTED'` naming it, at the point it is used (option at
 * construction, method when called, event when a listener is added): never a silent no-op.
 *
 * Known differences from ws, all deliberate; the same list as the README's "What changes in
 * behaviour" (and lib/ws.d.ts):
 * - A slow client is bounded: past `maxBufferedAmount` it is terminated (1008) or loses messages
 *   (`onOverflow`), Low ones first; one message larger than the bound still goes to a client whose
 *   queue is below `highWaterMark`. Drops are counted; a `send` callback gets ERR_SLUICE_DROPPED.
 * - `bufferedAmount` is sluice's queue for the socket (the kernel's: `ws.sluice.kernelBufferedAmount`).
 * - A socket never emits 'error': sluice closes a connection that breaks the protocol (1002,
 *   1007, 1009) and reports it only through 'close' with that code and sluice's metrics.
 * - In `port` mode `req` is an `http.IncomingMessage` built from the request sluice parsed in
 *   Rust; its `socket` is `{ remoteAddress, remotePort }`, not a `net.Socket`.
 * - `wss.close()` in `port` mode keeps the port bound until the last client has gone (new
 *   upgrades meanwhile get 503); ws unbinds at once. As in ws, open clients are not closed.
 * - The handshake checks are stricter (no Host, a repeated Host or Origin, not HTTP/1.1, a head
 *   over 16 KiB or 64 fields, more than 64 subprotocols or 16 extensions are refused);
 *   `handleProtocols` must answer an HTTP token (otherwise 500).
 * - A throwing `verifyClient` or `handleProtocols` answers 500 and is an 'error' event on the
 *   WebSocketServer (in ws the exception escapes from the http server's 'upgrade' event). A
 *   refusal status must be 4xx/5xx (`cb(false, 302)` throws ERR_SLUICE_WS_UNSUPPORTED; the client
 *   gets 500). A verifyClient that has not answered within `handshakeTimeout` is answered 503.
 * - `ping(data, mask, cb)` / `pong(...)`: `cb` is called once the frame is queued (ws: once it is
 *   written). `send()` returns whether sluice queued the message (ws returns undefined).
 *   `send(buffer, { binary: false })` requires valid UTF-8 (ERR_SLUICE_INVALID_DATA otherwise);
 *   ws sends the bytes and the peer fails the connection with 1007.
 *
 * The same as ws, though sluice's own Server differs: no pings unless `pingInterval` is given
 * (heartbeat code written for ws behaves as it did), `maxPayload` 100 MiB, `closeTimeout` 30 s,
 * `handleProtocols`' answer sent as is, verifyClient run while Node still owns the socket.
 * sluice-only options (`maxBufferedAmount`, `onOverflow`, `pingInterval`, ...) are accepted and
 * passed to the sluice Server; an option neither ws nor sluice knows throws (ws ignores it).
 */

const { EventEmitter } = require('events')
const http = require('http')
const tls = require('tls')
const { Server, Priority } = require('./sluice')

/** lib/sluice.js's mark on a socket it has taken over. */
const kTakenOver = Symbol.for('sluice.takenOver')
/** A socket this facade handed over to be refused (a later server's handleUpgrade ignores it). */
const kRefused = Symbol('sluice.ws.refused')

/** lib/sluice.js's mark for a handleProtocols hook answered as ws answers it. */
const kAnyProtocol = Symbol.for('sluice.ws.anyProtocol')
/** lib/sluice.js's mark on the request objects of its own listener. */
const kOwnRequest = Symbol.for('sluice.ownRequest')

const CONNECTING = 0
const OPEN = 1
const CLOSING = 2
const CLOSED = 3
const READY_STATES = ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED']

/** WebSocketServer states, as in ws. */
const RUNNING = 0
const SERVER_CLOSING = 1
const SERVER_CLOSED = 2

/** ws's default maxPayload (100 MiB). `0` means no limit in ws: sluice's largest value. */
const WS_DEFAULT_MAX_PAYLOAD = 100 * 1024 * 1024
const SLUICE_MAX_PAYLOAD = 2 ** 40
/** ws sends no pings by itself; sluice's own heartbeat is opt-in through the facade. */
const WS_DEFAULT_PING_INTERVAL = 0
/** sluice's default handshakeTimeout (DEFAULT_HANDSHAKE_TIMEOUT_MS in src/config.rs). */
const DEFAULT_HANDSHAKE_TIMEOUT = 5000
/** ws's default closeTimeout (30 s). */
const WS_DEFAULT_CLOSE_TIMEOUT = 30000

const EMPTY_BUFFER = Buffer.alloc(0)
/** Close code 1005: reported when a close frame has no body; sluice then sends an empty one. */
const NO_STATUS = 1005
/** Strict UTF-8 that keeps a BOM: decoding and re-encoding gives back the same bytes. */
const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })
const BINARY_TYPES = ['nodebuffer', 'arraybuffer', 'fragments']
if (typeof Blob !== 'undefined') BINARY_TYPES.push('blob')

const UNSUPPORTED = 'ERR_SLUICE_WS_UNSUPPORTED'

function sluiceError(Class, code, message) {
  const err = new Class(message)
  err.code = code
  return err
}

function unsupported(feature, hint) {
  return sluiceError(Error, UNSUPPORTED, `sluice/ws does not support ${feature}${hint ? `: ${hint}` : ''}`)
}

/** A net.Socket over TCP (not a Unix-domain socket, not another Duplex): one sluice can take. */
function isTcp(socket) {
  const handle = socket._handle
  return !!handle && typeof handle.fd === 'number' && !(handle.constructor && handle.constructor.name === 'Pipe')
}

/** sluice takes over TCP sockets only: their descriptor moves to its threads. */
function notTcp(cause) {
  const err = unsupported('a socket that is not a TCP socket (an http server on a Unix-domain socket, or another Duplex stream)', 'sluice takes the TCP connection over; listen on a TCP port')
  if (cause) err.cause = cause
  return err
}

function isBlob(value) {
  return typeof Blob !== 'undefined' && value instanceof Blob
}

/** ws's toBuffer: binary data as a Buffer without a copy; anything else through Buffer.from. */
function toBuffer(data) {
  if (Buffer.isBuffer(data)) return data
  if (data instanceof ArrayBuffer) return Buffer.from(data)
  if (ArrayBuffer.isView(data)) return Buffer.from(data.buffer, data.byteOffset, data.byteLength)
  return Buffer.from(data)
}

// Sluice Server options a WebSocketServer passes through unchanged (sluice extras; ws does not
// have them). `host`, `closeTimeout`, `maxPayload`, `handleProtocols` are ws options mapped below.
const SLUICE_OPTIONS = new Set([
  'maxBufferedAmount',
  'lowPriorityLimit',
  'onOverflow',
  'highWaterMark',
  'lowWaterMark',
  'pingInterval',
  'pongTimeout',
  'handshakeTimeout',
  'maxConnections',
  'threads',
  'kernelUnsentLimit',
  'laggingKernelLimit',
  'workerNice',
  'allowedOrigins',
  'maxPendingBytes',
  'pendingHighWaterMark',
  'defaultTtl',
  'maxInboundBytesPerSecond',
  'maxInboundFramesPerSecond',
  'inboundRateWindow',
  'maxPartialMessageBytes',
])

// ws options that sluice implements (the values are checked below).
const WS_OPTIONS = new Set([
  'port',
  'host',
  'server',
  'noServer',
  'path',
  'maxPayload',
  'verifyClient',
  'clientTracking',
  'handleProtocols',
  'closeTimeout',
  'backlog',
  'perMessageDeflate',
  'skipUTF8Validation',
  'allowSynchronousEvents',
  'autoPong',
  'maxBufferedChunks',
  'maxFragments',
  'maxPendingAutoPongs',
  'WebSocket',
])

// ---------------------------------------------------------------------------------------------
// Events for addEventListener / onmessage & co (as ws's lib/event-target.js).

const kTarget = Symbol('kTarget')
const kListener = Symbol('kListener')
const kForOnEventAttribute = Symbol('kForOnEventAttribute')

class Event {
  constructor(type) {
    this[kTarget] = null
    this._type = type
  }
  get target() {
    return this[kTarget]
  }
  get type() {
    return this._type
  }
}

class MessageEvent extends Event {
  constructor(type, options = {}) {
    super(type)
    this._data = options.data === undefined ? null : options.data
  }
  get data() {
    return this._data
  }
}

class CloseEvent extends Event {
  constructor(type, options = {}) {
    super(type)
    this._code = options.code === undefined ? 0 : options.code
    this._reason = options.reason === undefined ? '' : options.reason
    this._wasClean = options.wasClean === undefined ? false : options.wasClean
  }
  get code() {
    return this._code
  }
  get reason() {
    return this._reason
  }
  get wasClean() {
    return this._wasClean
  }
}

class ErrorEvent extends Event {
  constructor(type, options = {}) {
    super(type)
    this._error = options.error === undefined ? null : options.error
    this._message = options.message === undefined ? '' : options.message
  }
  get error() {
    return this._error
  }
  get message() {
    return this._message
  }
}

function callListener(listener, thisArg, event) {
  if (typeof listener === 'object' && listener !== null && typeof listener.handleEvent === 'function') {
    listener.handleEvent.call(listener, event)
  } else {
    listener.call(thisArg, event)
  }
}

// ---------------------------------------------------------------------------------------------
// EventEmitter whose listener changes go through one hook: `_listenersChanged(event)` after a
// listener was added or removed, `_checkListener(event)` before one is added (may throw).

class HookedEmitter extends EventEmitter {
  _checkListener() {}
  _listenersChanged() {}

  addListener(event, listener) {
    this._checkListener(event)
    super.addListener(event, listener)
    this._listenersChanged(event)
    return this
  }

  on(event, listener) {
    return this.addListener(event, listener)
  }

  prependListener(event, listener) {
    this._checkListener(event)
    super.prependListener(event, listener)
    this._listenersChanged(event)
    return this
  }

  removeListener(event, listener) {
    super.removeListener(event, listener)
    this._listenersChanged(event)
    return this
  }

  off(event, listener) {
    return this.removeListener(event, listener)
  }

  removeAllListeners(event) {
    if (event === undefined) {
      const names = this.eventNames()
      super.removeAllListeners()
      for (const name of names) this._listenersChanged(name)
    } else {
      super.removeAllListeners(event)
      this._listenersChanged(event)
    }
    return this
  }
}

// ---------------------------------------------------------------------------------------------

/** Events the facade WebSocket forwards from its sluice Connection only while someone listens:
 * with no listener, sluice does not wake the JS thread for them at all. */
const FORWARDED = ['message', 'ping', 'pong']

/**
 * The server side of one WebSocket connection, with ws's API. Instances come from a
 * `WebSocketServer` ('connection' event, `handleUpgrade` callback); `new WebSocket(url)` (a
 * client) is not supported: use `require('ws')` for clients.
 */
class WebSocket extends HookedEmitter {
  constructor(address, protocols, options) {
    super()
    if (address !== null) {
      throw unsupported('WebSocket clients (new WebSocket(url))', "sluice/ws is server-side only; use require('ws') for clients")
    }
    this._binaryType = BINARY_TYPES[0]
    this._conn = null
    this._readyState = CONNECTING
    this._closeRequested = false
    this._forwarders = null
    this._closeCode = 1006
    /** As ws (and the browser): bytes of what was sent once no longer OPEN, never written. */
    this._bufferedAfterClose = 0
  }

  /** Called by WebSocketServer once the sluice connection is open. */
  _setConnection(conn) {
    this._conn = conn
    this._readyState = OPEN
    this._forwarders = {
      message: (data, isBinary) => this.emit('message', isBinary ? this._convertBinary(data) : data, isBinary),
      ping: (data) => this.emit('ping', data),
      pong: (data) => this.emit('pong', data),
    }
    for (const event of FORWARDED) this._listenersChanged(event)
    conn.once('close', (code, reason) => {
      this._readyState = CLOSED
      this._closeCode = code
      for (const event of FORWARDED) conn.removeListener(event, this._forwarders[event])
      this.emit('close', code, reason ? Buffer.from(reason, 'utf8') : EMPTY_BUFFER)
    })
  }

  _listenersChanged(event) {
    const conn = this._conn
    if (conn === null || this._readyState === CLOSED || !FORWARDED.includes(event)) return
    const fwd = this._forwarders[event]
    const want = this.listenerCount(event) > 0
    const has = conn.listeners(event).includes(fwd)
    if (want && !has) conn.on(event, fwd)
    else if (!want && has) conn.removeListener(event, fwd)
  }

  _convertBinary(buf) {
    switch (this._binaryType) {
      case 'arraybuffer':
        return buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength)
      case 'fragments':
        return [buf]
      case 'blob':
        return new Blob([buf])
      default:
        return buf
    }
  }

  /** 'nodebuffer' (default), 'arraybuffer', 'fragments' or 'blob': the type of binary messages. */
  get binaryType() {
    return this._binaryType
  }

  set binaryType(type) {
    // As ws: an unknown type is ignored (the DOM's WebSocket does the same).
    if (BINARY_TYPES.includes(type)) this._binaryType = type
  }

  /** Bytes of messages queued in sluice and not yet handed to the kernel, plus (as in ws and the
   * browser) the size of everything sent after the connection stopped being OPEN. */
  get bufferedAmount() {
    return (this._conn === null ? 0 : this._conn.bufferedAmount) + this._bufferedAfterClose
  }

  /** ws's sendAfterClose: the data is not sent, its size is added to bufferedAmount. */
  _sentAfterClose(data, cb) {
    if (data) this._bufferedAfterClose += typeof data === 'string' ? Buffer.byteLength(data) : toBuffer(data).length
    if (cb) process.nextTick(cb, this._notOpenError())
  }

  /** Negotiated extensions: always '' (sluice does not implement permessage-deflate). */
  get extensions() {
    return ''
  }

  /** Always false: `pause()` is not supported. */
  get isPaused() {
    return false
  }

  /** The subprotocol the server answered with, '' if none. */
  get protocol() {
    return this._conn === null ? '' : this._conn.protocol || ''
  }

  get readyState() {
    if (this._readyState === OPEN && (this._closeRequested || !this._conn.isOpen)) return CLOSING
    return this._readyState
  }

  /** undefined on the server side, as in ws. */
  get url() {
    return undefined
  }

  /** The underlying sluice Connection (metrics, subscribe/unsubscribe, kernelBufferedAmount). */
  get sluice() {
    return this._conn
  }

  _notOpenError() {
    const state = this.readyState
    return new Error(`WebSocket is not open: readyState ${state} (${READY_STATES[state]})`)
  }

  /**
   * Sends a data message. options: `binary` (default: data is not a string), `compress`
   * (accepted, no effect: no permessage-deflate), `fin` (only true), `mask` (only false), and
   * `priority` (sluice: Priority.Critical | Normal | Low, default Normal), `key` (sluice's
   * conflation key) and `ttl` (sluice: ms after which the message, if still queued, is skipped).
   * `cb(err?)` runs once the frame is wholly handed to the kernel, or with an Error if it was
   * dropped (sluice policy, connection closed). Returns false if sluice did not queue it.
   */
  send(data, options, cb) {
    if (this.readyState === CONNECTING) throw this._notOpenError()
    if (typeof options === 'function') {
      cb = options
      options = {}
    }
    if (cb !== undefined && cb !== null && typeof cb !== 'function') {
      throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_CALLBACK', 'callback must be a function')
    }
    if (typeof data === 'number') data = data.toString()
    const opts = options || {}
    if (opts.fin === false) throw unsupported("send() with 'fin: false' (fragmented messages)")
    if (opts.mask === true) throw unsupported("send() with 'mask: true' (servers do not mask)")
    if (isBlob(data)) throw unsupported('sending a Blob', 'send a Buffer or ArrayBuffer')
    if (this.readyState !== OPEN) {
      this._sentAfterClose(data, cb)
      return false
    }
    const binary = opts.binary === undefined ? typeof data !== 'string' : !!opts.binary
    if (!data) data = typeof data === 'string' ? '' : EMPTY_BUFFER
    let payload
    if (binary) {
      payload = typeof data === 'string' ? Buffer.from(data, 'utf8') : toBuffer(data)
    } else {
      payload = typeof data === 'string' ? data : toBuffer(data)
    }
    const priority = opts.priority
    // sluice's conflation key: a newer message with the same key replaces this one while it
    // still waits in the client's queue.
    const sendOptions = opts.key === undefined && opts.ttl === undefined ? undefined : { key: opts.key, ttl: opts.ttl }
    const done = cb ? (err) => cb(err || undefined) : undefined
    if (!binary && typeof payload !== 'string') {
      // A text frame from bytes: sent as they are (ws does not validate them either).
      return sendTextBytes(this._conn, payload, priority, sendOptions, done)
    }
    return this._conn.send(payload, priority, sendOptions, done)
  }

  _control(kind, data, mask, cb) {
    if (this.readyState === CONNECTING) throw this._notOpenError()
    if (typeof data === 'function') {
      cb = data
      data = mask = undefined
    } else if (typeof mask === 'function') {
      cb = mask
      mask = undefined
    }
    if (mask === true) throw unsupported(`${kind}() with mask true (servers do not mask)`)
    if (typeof data === 'number') data = data.toString()
    if (isBlob(data)) throw unsupported(`a Blob as ${kind} data`)
    if (this.readyState !== OPEN) {
      this._sentAfterClose(data, cb)
      return
    }
    const payload = data === undefined || data === null || data === '' ? EMPTY_BUFFER : typeof data === 'string' ? Buffer.from(data, 'utf8') : toBuffer(data)
    if (payload.length > 125) {
      throw new RangeError('The data size must not be greater than 125 bytes')
    }
    const queued = this._conn[kind](payload)
    if (cb) process.nextTick(cb, queued ? undefined : new Error(`${kind} was not queued: the connection is closing`))
  }

  /** Sends a ping. `cb(err?)` runs once it is queued (ws: once written). */
  ping(data, mask, cb) {
    this._control('ping', data, mask, cb)
  }

  /** Sends an unsolicited pong (sluice answers pings by itself). */
  pong(data, mask, cb) {
    this._control('pong', data, mask, cb)
  }

  /**
   * Starts the closing handshake after the data already queued. Without `code`, as ws, a close
   * frame without a body (the peer reports 1005) and no reason; `data` (the reason) is a string
   * or Buffer of at most 123 bytes.
   */
  close(code, data) {
    const state = this.readyState
    if (state === CLOSED) return
    if (state === CONNECTING) throw this._notOpenError()
    if (code !== undefined && (typeof code !== 'number' || !validCloseCode(code))) {
      throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_CLOSE_CODE', 'First argument must be a valid error code number')
    }
    let reason = ''
    // As ws: without a code, `data` is not looked at (no body is sent).
    if (code !== undefined && data !== undefined && data !== null && data.length) {
      if (typeof data === 'string') reason = data
      else if (data instanceof Uint8Array) {
        try {
          reason = UTF8.decode(data)
        } catch {
          throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_CLOSE_REASON', 'the close reason must be valid UTF-8')
        }
      } else {
        throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_CLOSE_REASON', 'Second argument must be a string or a Uint8Array')
      }
      if (Buffer.byteLength(reason) > 123) {
        throw sluiceError(RangeError, 'ERR_SLUICE_INVALID_CLOSE_REASON', 'The message must not be greater than 123 bytes')
      }
    }
    if (state === CLOSING) return
    this._closeRequested = true
    if (code === undefined) {
      // As ws: a close frame without a body (the peer reports 1005), and no reason.
      this._conn._native.close(NO_STATUS, '')
    } else {
      this._conn.close(code, reason)
    }
  }

  /** Drops the TCP connection now; queued data is discarded. 'close' follows with 1006. */
  terminate() {
    const state = this.readyState
    if (state === CLOSED) return
    if (state === CONNECTING) throw this._notOpenError()
    this._closeRequested = true
    this._conn.terminate()
  }

  pause() {
    throw unsupported('pause()', 'sluice reads every connection in Rust; apply backpressure with priorities and maxBufferedAmount')
  }

  resume() {
    throw unsupported('resume()', 'pause() is not supported either')
  }

  /** The DOM-style listener API of ws: 'message', 'close', 'error' and 'open' events. */
  addEventListener(type, handler, options = {}) {
    for (const listener of this.listeners(type)) {
      if (!options[kForOnEventAttribute] && listener[kListener] === handler && !listener[kForOnEventAttribute]) {
        return
      }
    }
    let wrapper
    if (type === 'message') {
      wrapper = function onMessage(data, isBinary) {
        const event = new MessageEvent('message', { data: isBinary ? data : data.toString() })
        event[kTarget] = this
        callListener(handler, this, event)
      }
    } else if (type === 'close') {
      wrapper = function onClose(code, message) {
        const event = new CloseEvent('close', { code, reason: message.toString(), wasClean: code !== 1006 })
        event[kTarget] = this
        callListener(handler, this, event)
      }
    } else if (type === 'error') {
      wrapper = function onError(error) {
        const event = new ErrorEvent('error', { error, message: error.message })
        event[kTarget] = this
        callListener(handler, this, event)
      }
    } else if (type === 'open') {
      wrapper = function onOpen() {
        const event = new Event('open')
        event[kTarget] = this
        callListener(handler, this, event)
      }
    } else {
      return
    }
    wrapper[kForOnEventAttribute] = !!options[kForOnEventAttribute]
    wrapper[kListener] = handler
    if (options.once) this.once(type, wrapper)
    else this.on(type, wrapper)
  }

  removeEventListener(type, handler) {
    for (const listener of this.listeners(type)) {
      if (listener[kListener] === handler && !listener[kForOnEventAttribute]) {
        this.removeListener(type, listener)
        break
      }
    }
  }
}

for (const [name, value] of [
  ['CONNECTING', CONNECTING],
  ['OPEN', OPEN],
  ['CLOSING', CLOSING],
  ['CLOSED', CLOSED],
]) {
  Object.defineProperty(WebSocket, name, { enumerable: true, value })
  Object.defineProperty(WebSocket.prototype, name, { enumerable: true, value })
}

for (const property of ['binaryType', 'bufferedAmount', 'extensions', 'isPaused', 'protocol', 'readyState', 'url']) {
  Object.defineProperty(WebSocket.prototype, property, { enumerable: true })
}

for (const method of ['open', 'error', 'close', 'message']) {
  Object.defineProperty(WebSocket.prototype, `on${method}`, {
    enumerable: true,
    get() {
      for (const listener of this.listeners(method)) {
        if (listener[kForOnEventAttribute]) return listener[kListener]
      }
      return null
    },
    set(handler) {
      for (const listener of this.listeners(method)) {
        if (listener[kForOnEventAttribute]) {
          this.removeListener(method, listener)
          break
        }
      }
      if (typeof handler !== 'function') return
      this.addEventListener(method, handler, { [kForOnEventAttribute]: true })
    },
  })
}

/** Close codes an application may send (RFC 6455 §7.4), as ws's isValidStatusCode. */
function validCloseCode(code) {
  return (code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006) || (code >= 3000 && code <= 4999)
}

/**
 * A text frame whose payload is given as bytes (ws: `send(buffer, { binary: false })`).
 */
function sendTextBytes(conn, bytes, priority, options, cb) {
  // TODO(core): sluice's Connection.send has no text flag for binary data. Until it has, the
  // bytes are decoded as UTF-8 (they must be valid UTF-8: a text frame may carry nothing else).
  let text
  try {
    text = UTF8.decode(bytes)
  } catch {
    throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_DATA', 'a text message (binary: false) must be valid UTF-8')
  }
  return conn.send(text, priority, options, cb)
}

// ---------------------------------------------------------------------------------------------

/**
 * ws's WebSocketServer over a sluice Server. Exactly one of `port`, `server`, `noServer`.
 */
class WebSocketServer extends HookedEmitter {
  constructor(options, callback) {
    super()
    options = {
      maxPayload: WS_DEFAULT_MAX_PAYLOAD,
      clientTracking: true,
      closeTimeout: WS_DEFAULT_CLOSE_TIMEOUT,
      perMessageDeflate: false,
      verifyClient: null,
      handleProtocols: null,
      noServer: false,
      server: null,
      host: null,
      path: null,
      port: null,
      backlog: null,
      WebSocket,
      ...options,
    }

    if (
      (options.port == null && !options.server && !options.noServer) ||
      (options.port != null && (options.server || options.noServer)) ||
      (options.server && options.noServer)
    ) {
      throw new TypeError('One and only one of the "port", "server", or "noServer" options must be specified')
    }

    const core = checkOptions(options)
    /** The http.IncomingMessage standing for each request sluice's own listener parsed. */
    this._requests = new WeakMap()
    /** How long a verifyClient may take in server / noServer mode (sluice's handshakeTimeout). */
    this._handshakeTimeout = options.handshakeTimeout === undefined ? DEFAULT_HANDSHAKE_TIMEOUT : options.handshakeTimeout
    if (core.handleProtocols) {
      // As ws: whatever the hook returns is the answer, offered or not; a falsy value means none.
      const hook = core.handleProtocols
      core.handleProtocols = (protocols, req) => hook(protocols, this._incoming(req))
      core.handleProtocols[kAnyProtocol] = true
    }

    this.options = options
    this._state = RUNNING
    this._WebSocket = options.WebSocket
    /** facade WebSocket of each sluice Connection */
    this._sockets = new WeakMap()
    /** requests given to handleUpgrade with a callback: their 'connection' is the caller's */
    this._viaCallback = new WeakSet()
    this._live = 0
    this._server = null
    this._removeListeners = null
    this._closeEmitted = false
    this._coreClosed = false
    if (options.clientTracking) this.clients = new Set()

    core.verifyClient = (req) => this._verify(req)
    if (options.port != null) {
      core.port = options.port
      if (options.host != null) core.host = options.host
    } else {
      core.noServer = true
    }

    /** The sluice Server underneath: metrics(), connectionCount, publish(), ... */
    this.sluice = new Server(core)
    this.sluice.on('connection', (conn, req) => this._onConnection(conn, req))
    // sluice emits 'error' only when someone listens (this forwarder always does): the same
    // rule here, so that an error nobody listens for is not an unhandled 'error' event.
    this.sluice.on('error', (err) => {
      if (this.listenerCount('error') > 0) this.emit('error', err)
    })
    this.sluice.on('close', () => this._onCoreClose())

    if (options.port != null) {
      if (typeof callback === 'function') this.once('listening', callback)
      this.sluice.on('listening', () => this.emit('listening'))
      this.sluice.listen().then(null, (err) => process.nextTick(() => this.emit('error', err)))
    } else if (options.server) {
      this._server = options.server
      this._removeListeners = addListeners(this._server, {
        listening: this.emit.bind(this, 'listening'),
        error: this.emit.bind(this, 'error'),
        upgrade: (req, socket, head) => {
          try {
            this.handleUpgrade(req, socket, head)
          } catch (err) {
            socket.destroy()
            this.emit('error', err)
          }
        },
      })
    }
  }

  _checkListener(event) {
    if (event === 'headers') {
      throw unsupported("the 'headers' event", 'the 101 response is written in Rust; use handleProtocols to choose the subprotocol')
    }
    if (event === 'wsClientError') {
      throw unsupported("the 'wsClientError' event", 'sluice answers invalid upgrade requests itself (400/405)')
    }
  }

  /**
   * As ws, `req` is an `http.IncomingMessage` in every mode. In `port` mode sluice parsed the
   * request in Rust: this builds one from it (once per request; its `socket` is
   * `{ remoteAddress, remotePort }`, the connection itself being sluice's).
   */
  _incoming(req) {
    if (!req || !req[kOwnRequest]) return req
    let msg = this._requests.get(req)
    if (msg) return msg
    msg = new http.IncomingMessage(req.socket)
    msg.method = req.method
    msg.url = req.url
    msg.httpVersionMajor = 1
    msg.httpVersionMinor = 1
    msg.httpVersion = '1.1'
    msg.headers = req.headers
    msg.rawHeaders = req.rawHeaders
    msg.upgrade = true
    msg.complete = true
    msg.push(null)
    this._requests.set(req, msg)
    return msg
  }

  /** The core verifyClient hook: the closing state, the path, then the user's verifyClient. */
  _verify(req) {
    req = this._incoming(req)
    if (this._state !== RUNNING) return { code: 503, message: http.STATUS_CODES[503] }
    if (!this.shouldHandle(req)) return { code: 400, message: http.STATUS_CODES[400] }
    const verifyClient = this.options.verifyClient
    if (!verifyClient) return true
    const version = +req.headers['sec-websocket-version']
    const socket = req.socket || {}
    const info = {
      origin: req.headers[version === 8 ? 'sec-websocket-origin' : 'origin'],
      secure: !!(socket.authorized || socket.encrypted),
      req,
    }
    if (verifyClient.length === 2) {
      return new Promise((resolve) => {
        let answered = false
        verifyClient(info, (verified, code, message, headers) => {
          if (answered) return
          answered = true
          if (verified) return resolve(true)
          const status = code || 401
          if (!Number.isInteger(status) || status < 400 || status > 599) {
            resolve({ code: 500 })
            throw unsupported(`a verifyClient refusal with status ${status}`, 'sluice refuses with a 4xx or 5xx status; the client got 500')
          }
          const verdict = { code: status, message: message || http.STATUS_CODES[status] || '' }
          if (headers) verdict.headers = headers
          resolve(verdict)
        })
      })
    }
    return !!verifyClient(info)
  }

  _wrap(conn) {
    let ws = this._sockets.get(conn)
    if (ws) return ws
    ws = new this._WebSocket(null, undefined, this.options)
    this._sockets.set(conn, ws)
    ws._setConnection(conn)
    this._live++
    // Registered before the application's listeners (as in ws): `clients` no longer holds the
    // socket when its 'close' listeners run.
    ws.once('close', () => {
      this._live--
      if (this.clients) this.clients.delete(ws)
      this._maybeFinishClose()
    })
    if (this.clients) this.clients.add(ws)
    return ws
  }

  _onConnection(conn, req) {
    const own = req
    req = this._incoming(req)
    // The last use of the IncomingMessage standing for it: the application keeps it if it wants.
    this._requests.delete(own)
    const ws = this._wrap(conn)
    if (!this._viaCallback.has(req)) this.emit('connection', ws, req)
  }

  /** `{ port, address, family }` of the listener (null before listening). */
  address() {
    if (this.options.noServer) throw new Error('The server is operating in "noServer" mode')
    if (this._server) return this._server.address()
    // As ws: null once close() was called (sluice keeps the port until the last client has gone).
    if (this.options.port != null && this._state === RUNNING) return this.sluice.address()
    return null
  }

  /**
   * Stops accepting new connections (upgrades get 503) and emits 'close' when the existing ones
   * are all closed (as ws 8: they are not closed for you). `cb` is a one-time 'close' listener;
   * it gets an Error if the server was already closed.
   */
  close(cb) {
    if (this._state === SERVER_CLOSED) {
      if (cb) this.once('close', () => cb(new Error('The server is not running')))
      process.nextTick(() => this._emitClose())
      return
    }
    if (cb) this.once('close', cb)
    if (this._state === SERVER_CLOSING) return
    this._state = SERVER_CLOSING
    if (this._removeListeners) {
      this._removeListeners()
      this._removeListeners = this._server = null
    }
    if (this.options.port == null && !this.clients) {
      // ws: without client tracking a server/noServer WebSocketServer closes at once; sluice's
      // threads keep serving the remaining connections and stop after the last one.
      process.nextTick(() => this._emitClose())
    }
    this._maybeFinishClose()
  }

  _maybeFinishClose() {
    if (this._state === RUNNING || this._live > 0 || this._coreClosed) return
    this._coreClosed = true
    this.sluice.close().then(null, () => {})
  }

  _onCoreClose() {
    this._coreClosed = true
    if (this._removeListeners) {
      this._removeListeners()
      this._removeListeners = this._server = null
    }
    if (!this._closeEmitted) this._emitClose()
    else this._state = SERVER_CLOSED
  }

  _emitClose() {
    this._state = SERVER_CLOSED
    this._closeEmitted = true
    this.emit('close')
  }

  /** Whether `req` is for this server: its path (query string ignored) matches `path`. */
  shouldHandle(req) {
    if (this.options.path) {
      const index = req.url.indexOf('?')
      const pathname = index !== -1 ? req.url.slice(0, index) : req.url
      if (pathname !== this.options.path) return false
    }
    return true
  }

  /**
   * Takes an upgrade request over (e.g. from an http.Server's 'upgrade' event in `noServer`
   * mode). `cb(ws, req)` runs once the connection is open; as in ws, 'connection' is then not
   * emitted: call `wss.emit('connection', ws, req)` yourself. Without `cb`, 'connection' is
   * emitted. A refused or failed handshake is answered by sluice and `cb` is never called.
   */
  handleUpgrade(req, socket, head, cb) {
    if (cb !== undefined && typeof cb !== 'function') {
      throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_CALLBACK', 'callback must be a function')
    }
    if (socket && socket[kTakenOver]) {
      // A socket an earlier server refused is left alone (as ws finds it no longer writable), and
      // so is one for another path (that server's upgrade); a second upgrade of the same request
      // is a misconfiguration, as in ws.
      if (socket[kRefused] || !this.shouldHandle(req)) return
      throw sluiceError(Error, 'ERR_SLUICE_SOCKET_TAKEN', 'server.handleUpgrade() was called more than once with the same socket, possibly due to a misconfiguration')
    }
    if (socket && typeof socket.destroy === 'function' && (socket.destroyed || !socket.readable || !socket.writable)) {
      // As ws: a socket already ended or destroyed (the client left) is destroyed without an
      // answer.
      socket.destroy()
      return
    }
    if (socket && (socket.encrypted || socket instanceof tls.TLSSocket)) {
      throw unsupported('TLS sockets (wss:// through an https.Server)', 'terminate TLS in front of sluice (a proxy or load balancer)')
    }
    if (socket && !isTcp(socket)) throw notTcp()
    const handOver = (preset) => {
      try {
        if (!cb) {
          this.sluice._handOver(req, socket, head, undefined, preset)
          return
        }
        this._viaCallback.add(req)
        this.sluice._handOver(req, socket, head, (conn, r) => cb(this._wrap(conn), r), preset)
      } catch (err) {
        if (err.code === 'ERR_SLUICE_TAKEOVER_FAILED' && /not a TCP socket/.test(err.message)) throw notTcp(err)
        throw err
      }
    }
    const offered = this.sluice._checkUpgrade(req, socket)
    if (offered === null || this._state !== RUNNING || !this.shouldHandle(req)) {
      // Refused by sluice with ws's status and body, and counted, without asking any hook: an
      // invalid request (400, 405), another path (400), a full or closing server (503).
      handOver(undefined)
      socket[kRefused] = true
      return
    }
    if (!this.options.verifyClient) {
      // Nothing to wait for: handleProtocols (if any) sees the live socket, then the hand-over.
      handOver(this._chooseProtocol(offered, req))
      return
    }
    // As ws: verifyClient runs while Node still owns the socket (info.req.socket is live), and a
    // client that hangs up meanwhile is dropped without an answer. Unlike ws, a verdict is due
    // within handshakeTimeout (then 503), as on sluice's own listener.
    let answered = false
    const decided = (verdict) => {
      if (answered) return
      answered = true
      clearTimeout(timer)
      if (socket.destroyed || !socket.readable || !socket.writable) {
        socket.destroy()
        return
      }
      let preset
      if (verdict !== true) preset = { verdict }
      else if (this._state !== RUNNING) preset = { verdict: { code: 503 } }
      else preset = this._chooseProtocol(offered, req)
      try {
        handOver(preset)
      } catch (err) {
        socket.destroy()
        if (this.listenerCount('error') > 0) this.emit('error', err)
      }
    }
    const timer = setTimeout(() => decided({ code: 503 }), this._handshakeTimeout)
    let verdict
    try {
      verdict = this._verify(req)
    } catch (err) {
      this.sluice._hookFailed(err)
      verdict = { code: 500 }
    }
    if (verdict instanceof Promise) {
      verdict.then(decided, (err) => {
        this.sluice._hookFailed(err)
        decided({ code: 500 })
      })
    } else {
      decided(verdict)
    }
  }

  /** The accepting preset, with the subprotocol chosen as sluice's own listener chooses it
   * (this facade's hook answers as ws's does); a hook that throws refuses with 500. */
  _chooseProtocol(offered, req) {
    try {
      return { verdict: true, protocol: this.sluice._chooseProtocol(offered, req) }
    } catch (err) {
      this.sluice._hookFailed(err)
      return { verdict: { code: 500 } }
    }
  }

  /**
   * sluice extra: sends `data` to every open connection at `priority` (default Normal) in one
   * native call; the payload is framed once. A string is sent as a text frame, binary data as
   * a binary frame. `options`: `{ key, ttl, except }`, where `except` is a WebSocket of this
   * server (or an array of them) that does not get it: `wss.broadcast(data, { except: ws })` is
   * ws's "broadcast to every other client" loop in one call. The options may stand in place of
   * the priority: `broadcast(data, { priority, except })`. Returns as sluice's `broadcast`:
   * false once the fan-out backlog is above `pendingHighWaterMark` (still queued) or if refused.
   */
  broadcast(data, priority, options) {
    if (typeof data === 'number') data = data.toString()
    if (priority !== null && typeof priority === 'object' && options === undefined) {
      options = priority
      priority = undefined
    }
    if (options && options.priority !== undefined) {
      // The priority may stand in the options, also beside a priority argument (which wins).
      const { priority: p, ...rest } = options
      if (priority === undefined) priority = p
      options = rest
    }
    if (options && options.except !== undefined && options.except !== null) {
      const list = Array.isArray(options.except) ? options.except : [options.except]
      const conns = list.map((ws) => {
        if (!(ws instanceof WebSocket) || (ws._conn !== null && ws._conn._server !== this.sluice)) {
          throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_EXCEPT', 'except must be a WebSocket of this server, or an array of them')
        }
        return ws._conn
      })
      options = { ...options, except: conns.filter((c) => c !== null) }
    }
    return this.sluice.broadcast(data, priority, options)
  }
}

/** Checks the ws options and returns the sluice Server options they map to. */
function checkOptions(options) {
  const core = {}
  for (const name of Object.keys(options)) {
    if (!WS_OPTIONS.has(name) && !SLUICE_OPTIONS.has(name)) {
      throw sluiceError(TypeError, 'ERR_SLUICE_UNKNOWN_OPTION', `unknown option '${name}' (neither a ws nor a sluice option)`)
    }
  }
  const pmd = options.perMessageDeflate
  if (pmd !== false && pmd !== undefined && pmd !== null) {
    throw unsupported("the 'perMessageDeflate' option", 'sluice does not compress messages; pass perMessageDeflate: false or leave it out')
  }
  if (options.skipUTF8Validation) {
    throw unsupported("the 'skipUTF8Validation' option", 'sluice always validates text messages')
  }
  if (options.allowSynchronousEvents === false) {
    throw unsupported("'allowSynchronousEvents: false'", 'sluice delivers the events of a batch in one tick')
  }
  if (options.autoPong === false) {
    throw unsupported("'autoPong: false'", 'sluice answers pings in Rust')
  }
  for (const name of ['maxBufferedChunks', 'maxFragments', 'maxPendingAutoPongs']) {
    if (options[name] !== undefined) {
      throw unsupported(`the '${name}' option`, 'sluice bounds inbound messages with maxPayload')
    }
  }
  if (options.backlog != null) {
    throw unsupported("the 'backlog' option")
  }
  const WS = options.WebSocket
  if (WS !== undefined && WS !== WebSocket && !(typeof WS === 'function' && WS.prototype instanceof WebSocket)) {
    throw unsupported("a 'WebSocket' option other than sluice/ws's WebSocket or a class extending it")
  }
  if (options.server) {
    if (options.server instanceof tls.Server) {
      throw unsupported('an https/tls server', 'terminate TLS in front of sluice (a proxy or load balancer)')
    }
    if (typeof options.server.on !== 'function') {
      throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_OPTION', "'server' must be an http.Server")
    }
  }
  if (options.path != null && typeof options.path !== 'string') {
    throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_OPTION', `path must be a string, got ${typeof options.path}`)
  }
  if (options.verifyClient != null && typeof options.verifyClient !== 'function') {
    throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_OPTION', 'verifyClient must be a function')
  }
  if (options.handleProtocols != null) {
    if (typeof options.handleProtocols !== 'function') {
      throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_OPTION', 'handleProtocols must be a function')
    }
    core.handleProtocols = options.handleProtocols
  }
  core.maxPayload = options.maxPayload === 0 ? SLUICE_MAX_PAYLOAD : options.maxPayload
  core.closeTimeout = options.closeTimeout
  // ws has no heartbeat of its own: applications ping (and terminate) themselves.
  core.pingInterval = WS_DEFAULT_PING_INTERVAL
  for (const name of SLUICE_OPTIONS) {
    if (options[name] !== undefined) core[name] = options[name]
  }
  return core
}

function addListeners(server, map) {
  for (const event of Object.keys(map)) server.on(event, map[event])
  return function removeListeners() {
    for (const event of Object.keys(map)) server.removeListener(event, map[event])
  }
}

// ---------------------------------------------------------------------------------------------
// The rest of ws's exports: internals sluice does not have. They exist so that code importing
// them loads, and throw a clear error when used.

function createWebSocketStream() {
  throw unsupported('createWebSocketStream()', 'use the message events and send()')
}

function unsupportedClass(name) {
  const C = {
    [name]: class {
      constructor() {
        throw unsupported(`ws's ${name}`, 'it is an internal of ws')
      }
    },
  }[name]
  return C
}

function unsupportedHelpers(name, methods) {
  const out = {}
  for (const method of methods) {
    out[method] = () => {
      throw unsupported(`ws's ${name}.${method}()`, 'it is an internal of ws')
    }
  }
  return out
}

const PerMessageDeflate = unsupportedClass('PerMessageDeflate')
const Receiver = unsupportedClass('Receiver')
const Sender = unsupportedClass('Sender')
const extension = unsupportedHelpers('extension', ['format', 'parse'])
const subprotocol = unsupportedHelpers('subprotocol', ['parse'])

// As ws: the module is the WebSocket class, the rest hangs off it.
WebSocket.createWebSocketStream = createWebSocketStream
WebSocket.extension = extension
WebSocket.PerMessageDeflate = PerMessageDeflate
WebSocket.Receiver = Receiver
WebSocket.Sender = Sender
WebSocket.Server = WebSocketServer
WebSocket.subprotocol = subprotocol
WebSocket.WebSocket = WebSocket
WebSocket.WebSocketServer = WebSocketServer
WebSocket.Priority = Priority

module.exports = WebSocket
