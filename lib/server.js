'use strict'

/**
 * `Server`: an EventEmitter over a `NativeServer`. It listens on its own port, or takes sockets
 * over from Node's http servers (`handleUpgrade`, `attach`); broadcasts and publishes are one
 * native call each, however many connections there are.
 */

const { EventEmitter } = require('events')
const { NativeServer, MAX_MS, DEFAULT_CLOSE_TIMEOUT_MS } = require('./native')
const { sluiceError, nativeError, callSafely, safeEmit } = require('./errors')
const { jsOptions, toMessageOptions, topicOptions } = require('./options')
const { toPriority, toBytes, toTopic } = require('./validation')
const upgrade = require('./upgrade')
const { drain } = require('./dispatch')
const { Connection } = require('./connection')

class Server extends EventEmitter {
  /**
   * Every option is optional; each one's default is documented in `ServerOptions`
   * (index.d.ts), e.g. `maxBufferedAmount` 524288, `onOverflow` `'terminate'`, `pingInterval`
   * 30000, `closeTimeout` 5000, `maxPayload` 1048576.
   *
   * @param {import('./sluice').ServerOptions} [options] Default: `{}`
   * @throws {TypeError} `ERR_SLUICE_INVALID_OPTIONS`, `ERR_SLUICE_UNKNOWN_OPTION`, `ERR_SLUICE_INVALID_OPTION`
   * @throws {RangeError} `ERR_SLUICE_OUT_OF_RANGE`, `ERR_SLUICE_INVALID_OPTION`
   */
  constructor(options) {
    super()
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
    /** Event batches from the native side not yet handled, oldest first (see `drain`). */
    this._batches = []
    /** Next event of `_batches[0]`. */
    this._batchPos = 0
    this._draining = false
    this._drainLater = () => drain(this)
    try {
      // The native side checks the options (the one place they are checked): a TypeError or
      // RangeError with a stable code for one it refuses.
      this._native = new NativeServer(options, (events) => this._dispatch(events))
    } catch (err) {
      throw nativeError(err)
    }
    /** What JavaScript itself needs of the options: the hooks, `noServer`, `cluster`. */
    this._options = jsOptions(options)
  }

  /**
   * Binds and starts accepting. While listening the server keeps the process alive, as a
   * listening `net.Server` does (see `unref()`).
   *
   * @returns {Promise<import('./sluice').AddressInfo>} `{ port, address, family }`; rejects
   *   with `code` `'EADDRINUSE'`, `'EADDRNOTAVAIL'`, `'EACCES'`, `'ENOTFOUND'`,
   *   `'ERR_SLUICE_ALREADY_LISTENING'` or `'ERR_SLUICE_NO_SERVER'`
   */
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
   * request, refused, client gone) neither happens. A closing server answers 503.
   *
   * @param {import('http').IncomingMessage} req
   * @param {import('net').Socket} socket
   * @param {Buffer} [head] Default: empty
   * @param {(conn: Connection, req: import('http').IncomingMessage) => void} [callback]
   * @throws {Error} `ERR_SLUICE_ENCRYPTED_SOCKET` for a TLS socket, `ERR_SLUICE_SOCKET_TAKEN`
   *   for a socket already taken over, `ERR_SLUICE_INVALID_SOCKET` for one without a
   *   descriptor, `ERR_SLUICE_TAKEOVER_FAILED`
   * @throws {TypeError} `ERR_SLUICE_INVALID_ARG`, `ERR_SLUICE_INVALID_SOCKET`, `ERR_SLUICE_INVALID_CALLBACK`
   */
  handleUpgrade(req, socket, head, callback) {
    this._handOver(req, socket, head, callback, undefined)
  }

  /** `handleUpgrade` with the hooks' answers already known (see `upgrade.handOver`). */
  _handOver(req, socket, head, callback, preset) {
    upgrade.handOver(this, req, socket, head, callback, preset)
  }

  /**
   * Runs the checks `handleUpgrade` would (sluice/ws's hook to call `verifyClient` before the
   * hand-over, as ws does): the offered subprotocols of a valid upgrade request, or null.
   */
  _checkUpgrade(req, socket) {
    return upgrade.checkUpgrade(this, req, socket)
  }

  /**
   * Hands the upgrade requests of an http (or Express, Fastify...) server to sluice. HTTP routes
   * keep working on the same port. Requests for another path are left to other 'upgrade'
   * listeners, or answered 404 if there are none. `close()` removes the listener.
   *
   * @param {import('http').Server} httpServer
   * @param {Object} [options]
   * @param {string} [options.path] Only upgrades for this path (the query string is ignored).
   *   Default: every path
   * @returns {this}
   * @throws {TypeError} `ERR_SLUICE_INVALID_ARG`, `ERR_SLUICE_INVALID_OPTION`
   * @throws {Error} `ERR_SLUICE_ENCRYPTED_SOCKET` for an https server, `ERR_SLUICE_CLOSED`
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
    const listener = upgrade.upgradeListener(this, httpServer, path)
    httpServer.on('upgrade', listener)
    this._attached.push([httpServer, listener])
    return this
  }

  /**
   * @returns {import('./sluice').AddressInfo | null} `{ port, address, family }` while listening, else null
   */
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

  /** Whether `c` is a Connection of this server (open or closed). */
  _owns(c) {
    return c instanceof Connection && c._server === this
  }

  /**
   * Sends `data` to every open connection (but those in `options.except`). The payload is copied
   * once and framed once; the fan-out runs on sluice's threads. Like `Writable#write`, returns
   * false once the broadcasts waiting for fan-out are at or above `pendingHighWaterMark`: the
   * message is queued all the same, and the server emits `'drain'` when the backlog is back
   * below (`await server.drained()`). Also false when it was refused: past `maxPendingBytes`
   * (Normal and Low only; counted in `metrics().fanoutRejected`) or while the server closes.
   *
   * @param {import('./sluice').Data} data A string goes out as a text frame, binary data as a binary one
   * @param {import('./sluice').PriorityLike} [priority='normal']
   * @param {import('./sluice').BroadcastOptions} [options] `{ key, ttl, except }`. Default: no
   *   key, the server's `defaultTtl`, every connection
   * @returns {boolean}
   * @throws {TypeError} `ERR_SLUICE_INVALID_DATA`, `ERR_SLUICE_INVALID_PRIORITY`, `ERR_SLUICE_INVALID_EXCEPT`, ...
   */
  broadcast(data, priority, options) {
    const p = toPriority(priority)
    const bytes = toBytes(data)
    const opts = toMessageOptions(options, this, true)
    return bytes === null ? this._native.broadcastText(data, p, opts) : this._native.broadcast(bytes, p, false, opts)
  }

  /**
   * Sends `data` to the connections subscribed to `topic`; returns as `broadcast`. On a topic
   * with history (see `topic()`) it returns a Promise of the message's `{ offset, epoch }`
   * instead, rejecting with `ERR_SLUICE_NOT_QUEUED` when nothing was published.
   *
   * @param {string} topic
   * @param {import('./sluice').Data} data
   * @param {import('./sluice').PriorityLike} [priority='normal']
   * @param {import('./sluice').BroadcastOptions} [options] `{ key, ttl, except }`
   * @returns {boolean | Promise<{ offset: number, epoch: string }>}
   * @throws {TypeError} as `broadcast`, and `ERR_SLUICE_INVALID_TOPIC`, `ERR_SLUICE_UNSUPPORTED`
   */
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
   *
   * @returns {Promise<void>}
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
   * `conn.subscribe(topic, { since })`; bounded by count, encoded bytes and age in ms, whichever
   * bites first. `offsets: 'prefix'` makes each message carry its offset for the client to
   * remember: 8 bytes big-endian before a binary payload, the decimal number and a space before
   * a text one. `publish` on such a topic returns a Promise of `{ offset, epoch }`.
   *
   * @param {string} name
   * @param {Object} [options] Default: `{}`
   * @param {{ size?: number, bytes?: number, ttl?: number }} [options.history] Default: no
   *   history; its `size` default 1000, `bytes` default 8388608 (8 MiB), `ttl` default 300000
   * @param {'none' | 'prefix'} [options.offsets='none']
   * @returns {{ epoch: string | null }} With cluster, null: the epoch is Redis's, known from the
   *   first publish on
   * @throws {TypeError} `ERR_SLUICE_INVALID_TOPIC`, `ERR_SLUICE_INVALID_OPTIONS`, `ERR_SLUICE_UNKNOWN_OPTION`, `ERR_SLUICE_INVALID_OPTION`
   * @throws {RangeError} `ERR_SLUICE_INVALID_OPTION`, `ERR_SLUICE_OUT_OF_RANGE`
   */
  topic(name, options = {}) {
    const t = toTopic(name)
    const o = topicOptions(options)
    if (o === null) return { epoch: null }
    let epoch
    try {
      epoch = this._native.configureTopic(t, o.size, o.bytes, o.ttl, o.prefix)
    } catch (err) {
      // ERR_SLUICE_INVALID_TOPIC: a topic the cluster cannot number.
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

  /**
   * @param {string} topic
   * @returns {number} Connections subscribed to `topic`
   */
  subscriberCount(topic) {
    return this._native.subscriberCount(toTopic(topic))
  }

  /**
   * Replaces the key and certificate (and `ca`, `passphrase`) that new `wss://` connections are
   * served with, without a restart, as Node's `tls.Server#setSecureContext`: the handshakes
   * after this call get the new certificate, and open connections keep theirs. Checked as the
   * `tls` option is; on an error the current certificate stays.
   *
   * @param {import('./sluice').TlsOptions} options `{ key, cert, ca?, passphrase? }`
   * @throws {Error} `ERR_SLUICE_TLS_INVALID_KEY`, `ERR_SLUICE_TLS_INVALID_CERT`,
   *   `ERR_SLUICE_TLS_KEY_MISMATCH`, `ERR_SLUICE_TLS_PASSPHRASE`, `ERR_SLUICE_NO_TLS` (a server
   *   created without `tls`)
   * @throws {TypeError} `ERR_SLUICE_INVALID_OPTION`, `ERR_SLUICE_UNKNOWN_OPTION`
   */
  setSecureContext(options) {
    try {
      this._native.setSecureContext(options)
    } catch (err) {
      throw nativeError(err)
    }
  }

  /**
   * Counters and distributions; see `Metrics` in index.d.ts.
   *
   * @returns {import('../index').Metrics} `cluster` is null without the `cluster` option
   */
  metrics() {
    const m = this._native.metrics()
    if (m.cluster === undefined) m.cluster = null
    return m
  }

  /**
   * Stops accepting, closes every connection with 1001 after its queued data, waits up to
   * `timeout` ms for their close handshakes, terminates the rest and stops sluice's threads.
   * Calling it again returns the same promise.
   *
   * @param {Object} [options]
   * @param {number} [options.timeout=5000] Whole ms from 0 to 2^31 - 1
   * @returns {Promise<void>}
   * @throws {RangeError} `ERR_SLUICE_OUT_OF_RANGE`
   */
  close({ timeout = DEFAULT_CLOSE_TIMEOUT_MS } = {}) {
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

  /**
   * Keep the process alive while listening (the default).
   *
   * @returns {this}
   */
  ref() {
    this._native.ref()
    return this
  }

  /**
   * Let the process exit while listening, like `net.Server#unref()`.
   *
   * @returns {this}
   */
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

  /** The subprotocol to answer with (see `upgrade.chooseProtocol`). */
  _chooseProtocol(protocols, req) {
    return upgrade.chooseProtocol(this, protocols, req)
  }

  /** A hook threw: an 'error' event if anyone listens (see `upgrade.hookFailed`). */
  _hookFailed(err) {
    upgrade.hookFailed(this, err)
  }

  /** Runs the hooks for a handshake and answers the native side (see `upgrade.verify`). */
  _verify(token, request, protocols) {
    return upgrade.verify(this, token, request, protocols)
  }

  /**
   * Receives a batch of events from the native side (its thread-safe call). Batches are handled
   * in order by `drain` (lib/dispatch.js).
   */
  _dispatch(events) {
    this._batches.push(events)
    if (!this._draining) drain(this)
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
      callSafely(callback, sluiceError(Error, 'ERR_SLUICE_DROPPED', 'the server closed before the message was written'))
    }
    if (this._resolveClose) this._resolveClose()
    // Nothing waits for fan-out any more: a producer awaiting drained() goes on (and learns from
    // broadcast() that the server is closed).
    if (this._resolveDrained) this._resolveDrained()
    this._drained = this._resolveDrained = null
    safeEmit(this, 'close')
  }
}

module.exports = { Server }
