'use strict'

/**
 * The facade's WebSocket: the server side of one connection with ws's API, over a sluice
 * `Connection` (`ws.sluice`). Semantics follow ws 8's lib/websocket.js wherever a feature is
 * supported; see lib/ws.js for the differences.
 */

const { MAX_CONTROL_PAYLOAD, MAX_CLOSE_REASON } = require('../native')
const { sluiceError } = require('../errors')
const { unsupported } = require('./errors')
const { validCloseCode, isBlob } = require('./validation')
const { toBuffer } = require('./buffer-util')
const { HookedEmitter } = require('./hooked-emitter')
const eventTarget = require('./event-target')
const { CONNECTING, OPEN, CLOSING, CLOSED, READY_STATES, EMPTY_BUFFER, NO_STATUS, UTF8, BINARY_TYPES } = require('./constants')

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

  /**
   * As ws: the names of the negotiated extensions, comma-separated (`'permessage-deflate'` when
   * compression was negotiated), '' for none. The whole Sec-WebSocket-Extensions answer, with its
   * parameters, is `ws.sluice.extensions`.
   */
  get extensions() {
    return this._conn === null ? '' : extensionNames(this._conn.extensions || '')
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
   * (accepted, no effect: with permessage-deflate negotiated, sluice compresses every message of
   * at least `threshold` bytes), `fin` (only true), `mask` (only false), and
   * `priority` (sluice: Priority.Critical | Normal | Low, default Normal), `key` (sluice's
   * conflation key) and `ttl` (sluice: ms after which the message, if still queued, is skipped).
   * `cb(err?)` runs once the frame is wholly handed to the kernel, or with an Error if it was
   * dropped (sluice policy, connection closed). Returns false if sluice did not queue it.
   *
   * @param {string | Buffer | ArrayBuffer | ArrayBufferView | number} data
   * @param {Object} [options]
   * @param {boolean} [options.binary] Default: `typeof data !== 'string'`
   * @param {boolean} [options.compress] Accepted, no effect (the threshold decides)
   * @param {boolean} [options.fin=true] Only true
   * @param {boolean} [options.mask=false] Only false
   * @param {import('../sluice').PriorityLike} [options.priority='normal'] sluice's priority
   * @param {string} [options.key] sluice's conflation key. Default: none
   * @param {number} [options.ttl] sluice's time to live in ms. Default: the server's `defaultTtl`
   * @param {(err?: Error) => void} [cb]
   * @returns {boolean}
   * @throws {Error} `ERR_SLUICE_WS_UNSUPPORTED` (`fin: false`, `mask: true`, a Blob)
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
    if (payload.length > MAX_CONTROL_PAYLOAD) {
      throw new RangeError(`The data size must not be greater than ${MAX_CONTROL_PAYLOAD} bytes`)
    }
    const queued = this._conn[kind](payload)
    if (cb) process.nextTick(cb, queued ? undefined : new Error(`${kind} was not queued: the connection is closing`))
  }

  /**
   * Sends a ping. `cb(err?)` runs once it is queued (ws: once written).
   *
   * @param {string | Buffer | number} [data] At most 125 bytes. Default: empty
   * @param {boolean} [mask=false] Only false
   * @param {(err?: Error) => void} [cb]
   */
  ping(data, mask, cb) {
    this._control('ping', data, mask, cb)
  }

  /**
   * Sends an unsolicited pong (sluice answers pings by itself).
   *
   * @param {string | Buffer | number} [data] At most 125 bytes. Default: empty
   * @param {boolean} [mask=false] Only false
   * @param {(err?: Error) => void} [cb]
   */
  pong(data, mask, cb) {
    this._control('pong', data, mask, cb)
  }

  /**
   * Starts the closing handshake after the data already queued. Without `code`, as ws, a close
   * frame without a body (the peer reports 1005) and no reason; `data` (the reason) is a string
   * or Buffer of at most 123 bytes.
   *
   * @param {number} [code] 1000-1003, 1007-1014 or 3000-4999. Default: none (1005 at the peer)
   * @param {string | Buffer} [data] The reason, at most 123 bytes of UTF-8. Default: none
   * @throws {TypeError} `ERR_SLUICE_INVALID_CLOSE_CODE`, `ERR_SLUICE_INVALID_CLOSE_REASON`
   * @throws {RangeError} `ERR_SLUICE_INVALID_CLOSE_REASON`
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
      if (Buffer.byteLength(reason) > MAX_CLOSE_REASON) {
        throw sluiceError(RangeError, 'ERR_SLUICE_INVALID_CLOSE_REASON', `The message must not be greater than ${MAX_CLOSE_REASON} bytes`)
      }
    }
    if (state === CLOSING) return
    this._closeRequested = true
    if (code === undefined) {
      // As ws: a close frame without a body (the peer reports 1005), and no reason.
      this._conn._native.connClose(this._conn.id, NO_STATUS, '')
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

  /**
   * The DOM-style listener API of ws: 'message', 'close', 'error' and 'open' events, delivered
   * as Event objects (see lib/ws/event-target.js).
   *
   * @param {'message' | 'close' | 'error' | 'open'} type
   * @param {Function | { handleEvent: Function }} handler
   * @param {{ once?: boolean }} [options] Default: `{}`
   */
  addEventListener(type, handler, options = {}) {
    eventTarget.addEventListener(this, type, handler, options)
  }

  /** Removes a handler `addEventListener` added. */
  removeEventListener(type, handler) {
    eventTarget.removeEventListener(this, type, handler)
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

eventTarget.defineEventAttributes(WebSocket.prototype, ['open', 'error', 'close', 'message'])

/** `'permessage-deflate; client_max_window_bits=15, x'` -> `'permessage-deflate,x'` (ws's form). */
function extensionNames(header) {
  if (header === '') return ''
  return header
    .split(',')
    .map((ext) => ext.split(';')[0].trim())
    .filter((name) => name !== '')
    .join()
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

module.exports = { WebSocket }
