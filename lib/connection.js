'use strict'

/** `Connection`: one open WebSocket, an EventEmitter over the native server's `conn*` methods. */

const { EventEmitter } = require('events')
const { Interest, MAX_CLOSE_REASON } = require('./native')
const { sluiceError, nativeError } = require('./errors')
const { toPriority, toBytes, toTopic, controlPayload, validCloseCode } = require('./validation')
const { toMessageOptions } = require('./options')

/** Inbound events the native side passes on only while JavaScript listens (interest bits). */
const INTEREST = { __proto__: null, message: Interest.Message, ping: Interest.Ping, pong: Interest.Pong }
const INTEREST_EVENTS = Object.keys(INTEREST)

/**
 * A connection's listener table (EventEmitter's `_events`). EventEmitter makes it
 * `{ __proto__: null }`, which V8 keeps as a hash table (about 180 bytes per connection); an
 * instance of this constructor, whose prototype has no properties at all, is an ordinary object
 * with the same lookups (`table[event]` finds no inherited name) at about 50 bytes.
 */
function Listeners() {}
Listeners.prototype = Object.create(null)

/**
 * A connection's state in one small integer (`_bits`), one field where four took 32 bytes: the
 * inbound events listened to (low byte), those the native side was last told of (second byte),
 * and whether the close event and the peer's close frame have been reached.
 */
const NATIVE_SHIFT = 8
const CLOSED = 1 << 16
const PEER_CLOSED = 1 << 17

/**
 * One open WebSocket connection of a `Server` (its `'connection'` event). Inbound messages,
 * pings and pongs are events; `send`, `ping`, `close` and `terminate` queue in Rust and return at
 * once.
 */
class Connection extends EventEmitter {
  /**
   * Made by the server for each connection; not constructed by applications.
   *
   * @param {number} id
   * @param {import('./sluice').Request} request
   * @param {import('./server').Server} server
   * @param {string} protocol
   * @param {string} extensions
   */
  constructor(id, request, server, protocol, extensions) {
    super()
    this._events = new Listeners()
    this._server = server
    /** Server-unique id of this connection. */
    this.id = id
    /**
     * The upgrade request: `{ url, method, headers, remoteAddress, remotePort, socket }` from
     * sluice's own listener, or the `http.IncomingMessage` given to `handleUpgrade`.
     */
    this.request = request
    /** The negotiated subprotocol, `''` if none. */
    this.protocol = protocol
    /** The negotiated extensions (the 101's `Sec-WebSocket-Extensions`: permessage-deflate and its parameters), `''` if none. */
    this.extensions = extensions
    // The native side starts with messages on, so that none is lost before the 'connection'
    // handlers have added their listeners; `_syncInterest` then tells it what is listened to.
    // Listeners are seen by the overrides of EventEmitter's methods below (on the prototype: no
    // per-connection 'newListener' / 'removeListener' listeners and their closures).
    this._bits = INTEREST.message << NATIVE_SHIFT
  }

  /**
   * The native server: calls on this connection are its `conn*` methods, with `id` (no native
   * object per connection, and no field for it: it is the server's).
   */
  get _native() {
    return this._server._native
  }

  /** The client's address (the request's, or its socket's). */
  get remoteAddress() {
    const r = this.request
    return r.remoteAddress ?? (r.socket && r.socket.remoteAddress)
  }

  /** An application may set its own (a proxy's forwarded address): it is kept as given. */
  set remoteAddress(value) {
    Object.defineProperty(this, 'remoteAddress', { value, writable: true, enumerable: true, configurable: true })
  }

  /** The close event has been reached in the event stream (the connection is closed). */
  _markClosed() {
    this._bits |= CLOSED
  }

  /** The peer's close frame was reached in the event stream (the connection is closing). */
  _markPeerClosed() {
    this._bits |= PEER_CLOSED
  }

  /** A listener for `event` was added. */
  _listened(event) {
    const bit = INTEREST[event]
    if (bit && !(this._bits & bit)) {
      this._bits |= bit
      this._syncInterest()
    }
  }

  /** Listeners for `event` (every event, for `undefined`) may have been removed. */
  _unlistened(event) {
    for (const name of event === undefined ? INTEREST_EVENTS : [event]) {
      const bit = INTEREST[name]
      if (bit && this._bits & bit && this.listenerCount(name) === 0) {
        this._bits &= ~bit
        this._syncInterest()
      }
    }
  }

  // `once` and `prependOnceListener` add through `on` / `prependListener`, and a once-listener
  // that fires removes itself through `removeListener`: these cover every way in and out.
  on(event, listener) {
    super.on(event, listener)
    this._listened(event)
    return this
  }

  addListener(event, listener) {
    return this.on(event, listener)
  }

  prependListener(event, listener) {
    super.prependListener(event, listener)
    this._listened(event)
    return this
  }

  removeListener(event, listener) {
    super.removeListener(event, listener)
    this._unlistened(event)
    return this
  }

  off(event, listener) {
    return this.removeListener(event, listener)
  }

  removeAllListeners(event) {
    if (arguments.length === 0) super.removeAllListeners()
    else super.removeAllListeners(event)
    this._unlistened(event)
    return this
  }

  /** Tells the native side which inbound events to pass on (none: they never wake this thread). */
  _syncInterest() {
    const interest = this._bits & 0xff
    if (interest !== (this._bits >> NATIVE_SHIFT) & 0xff) {
      this._bits = (this._bits & ~(0xff << NATIVE_SHIFT)) | (interest << NATIVE_SHIFT)
      this._native.connSetInterest(this.id, interest)
    }
  }

  /** Bytes queued in sluice for this connection and not yet handed to the kernel. */
  get bufferedAmount() {
    return this._native.connBufferedAmount(this.id)
  }

  /** Bytes in the kernel's send queue not yet acknowledged (Linux SIOCOUTQ), or null. */
  get kernelBufferedAmount() {
    return this._native.connKernelBufferedAmount(this.id)
  }

  /** True until the connection starts closing. */
  get isOpen() {
    return !(this._bits & (CLOSED | PEER_CLOSED)) && this._native.connIsOpen(this.id)
  }

  /**
   * Queues `data` (string: text frame; binary: binary frame) at `priority`. `callback(err)` is
   * called once: with null when the whole frame has been handed to the kernel, or with an error
   * when it was not written (`ERR_SLUICE_DROPPED`: policy, overflow, closed; `ERR_SLUICE_REPLACED`,
   * `ERR_SLUICE_EXPIRED`). Also `send(data, callback)` and `send(data, priority, callback)`.
   *
   * @param {import('./sluice').Data} data
   * @param {import('./sluice').PriorityLike} [priority='normal']
   * @param {import('./sluice').MessageOptions} [options] `{ key, ttl }`. Default: no key, the
   *   server's `defaultTtl`
   * @param {(err: Error | null) => void} [callback]
   * @returns {boolean} false if it was not queued: dropped by policy, overflow, or the connection is closed
   * @throws {TypeError} `ERR_SLUICE_INVALID_DATA`, `ERR_SLUICE_INVALID_PRIORITY`, `ERR_SLUICE_INVALID_CALLBACK`
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
    return bytes === null ? this._native.connSendText(this.id, data, p, ack, opts) : this._native.connSend(this.id, bytes, p, false, ack, opts)
  }

  /**
   * How late this connection is: the age in ms of the oldest message queued for it and not yet
   * written, 0 when nothing waits. Read synchronously, like `bufferedAmount`.
   */
  get lag() {
    return this._native.connLag(this.id)
  }

  /** Messages queued for this connection whose `ttl` ran out before they were written. */
  get expired() {
    return this._native.connExpired(this.id)
  }

  /** Queued messages of this connection replaced by a newer one with the same `key`. */
  get replaced() {
    return this._native.connReplaced(this.id)
  }

  /**
   * Sends a ping; the peer's pong arrives as a 'pong' event.
   *
   * @param {import('./sluice').Data | number} [data] At most 125 bytes. Default: empty
   * @returns {boolean} false if the connection is closing
   * @throws {RangeError} `ERR_SLUICE_INVALID_DATA`
   */
  ping(data) {
    return this._native.connPing(this.id, controlPayload(data), false)
  }

  /**
   * Sends an unsolicited pong (a one-way heartbeat).
   *
   * @param {import('./sluice').Data | number} [data] At most 125 bytes. Default: empty
   * @returns {boolean} false if the connection is closing
   * @throws {RangeError} `ERR_SLUICE_INVALID_DATA`
   */
  pong(data) {
    return this._native.connPing(this.id, controlPayload(data), true)
  }

  /**
   * Subscribes to `topic`. With `{ since: { offset, epoch } }` on a topic with history: first
   * the messages published after `offset` (if that epoch's history still holds them all), then
   * the live ones, with no gap and no duplicate; the result is then a Promise of
   * `{ recovered, offset, epoch }`: `recovered` false means the history could not fill the gap
   * (another epoch, or too old an offset) and the connection is subscribed from now on: send it
   * a snapshot. `offset` is the topic's latest.
   *
   * @param {string} topic
   * @param {{ since: { offset: number, epoch: string } }} [options] Default: subscribe from now on
   * @returns {boolean | Promise<{ recovered: boolean, offset: number, epoch: string }>} false if
   *   already subscribed or closed
   * @throws {TypeError} `ERR_SLUICE_INVALID_TOPIC`, `ERR_SLUICE_INVALID_OPTIONS`
   */
  subscribe(topic, options) {
    const t = toTopic(topic)
    if (options === undefined) return this._native.connSubscribe(this.id, t)
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
      r = this._native.connResume(this.id, t, offset, epoch, token)
    } catch (err) {
      // ERR_SLUICE_NO_HISTORY, ERR_SLUICE_ALREADY_SUBSCRIBED, ERR_SLUICE_CLOSED
      return Promise.reject(nativeError(err))
    }
    if (r.pending) return server._awaitPending(token)
    return Promise.resolve({ recovered: r.recovered, offset: r.offset, epoch: r.epoch })
  }

  /**
   * @param {string} topic
   * @returns {boolean} false if not subscribed
   * @throws {TypeError} `ERR_SLUICE_INVALID_TOPIC`
   */
  unsubscribe(topic) {
    return this._native.connUnsubscribe(this.id, toTopic(topic))
  }

  /**
   * Graceful close: the close frame follows the data already queued; the connection ends when
   * the peer answers, or after `closeTimeout`.
   *
   * @param {number} [code=1000] 1000-1003, 1007-1014 or 3000-4999
   * @param {string} [reason=''] At most 123 bytes of UTF-8
   * @returns {boolean} false if already closing or closed
   * @throws {RangeError} `ERR_SLUICE_INVALID_CLOSE_CODE`, `ERR_SLUICE_INVALID_CLOSE_REASON`
   * @throws {TypeError} `ERR_SLUICE_INVALID_CLOSE_REASON`
   */
  close(code = 1000, reason = '') {
    if (!validCloseCode(code)) {
      throw sluiceError(RangeError, 'ERR_SLUICE_INVALID_CLOSE_CODE', `invalid close code ${code}`)
    }
    if (typeof reason !== 'string') {
      throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_CLOSE_REASON', 'reason must be a string')
    }
    if (Buffer.byteLength(reason) > MAX_CLOSE_REASON) {
      throw sluiceError(RangeError, 'ERR_SLUICE_INVALID_CLOSE_REASON', `reason must be at most ${MAX_CLOSE_REASON} bytes`)
    }
    return this._native.connClose(this.id, code, reason)
  }

  /**
   * Drops the TCP connection now; whatever is queued is discarded (and counted as dropped).
   *
   * @returns {boolean} false if already closed
   */
  terminate() {
    return this._native.connTerminate(this.id)
  }
}

module.exports = { Connection }
