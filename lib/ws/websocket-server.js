'use strict'

/**
 * The facade's WebSocketServer: ws 8's WebSocketServer (lib/websocket-server.js) over a sluice
 * `Server` (`wss.sluice`), in `port`, `server` or `noServer` mode. See lib/ws.js for the
 * differences from ws.
 */

const http = require('http')
const tls = require('tls')
const { Server } = require('../server')
const { sluiceError } = require('../errors')
const { DEFAULT_HANDSHAKE_TIMEOUT_MS } = require('../native')
const { kTakenOver, kAnyProtocol, kOwnRequest } = require('../constants')
const { unsupported, notTcp } = require('./errors')
const { isTcp } = require('./validation')
const { HookedEmitter } = require('./hooked-emitter')
const { WebSocket } = require('./websocket')
const { checkOptions } = require('./options')
const { kRefused, RUNNING, SERVER_CLOSING, SERVER_CLOSED, WS_DEFAULT_MAX_PAYLOAD, WS_DEFAULT_CLOSE_TIMEOUT } = require('./constants')

/**
 * ws's WebSocketServer over a sluice Server. Exactly one of `port`, `server`, `noServer`.
 */
class WebSocketServer extends HookedEmitter {
  /**
   * @param {Object} options ws's options, and sluice's own (`maxBufferedAmount`, `onOverflow`,
   *   ...: see `ServerOptions`), passed to the sluice Server
   * @param {number} [options.port] Listen on this port (sluice's own listener)
   * @param {string} [options.host] With `port`. Default: as Node's `net.Server`
   * @param {import('http').Server} [options.server] Take the upgrades of this http server
   * @param {boolean} [options.noServer=false] Upgrades come through `handleUpgrade`
   * @param {string} [options.path] Only this path. Default: every path
   * @param {number} [options.maxPayload=104857600] Largest inbound message (100 MiB); `0`: no limit
   * @param {number} [options.closeTimeout=30000] ms from a close request to the peer's close frame
   * @param {boolean} [options.clientTracking=true] Keep `wss.clients`
   * @param {Function} [options.verifyClient] `(info)` or `(info, cb)`, as in ws
   * @param {Function} [options.handleProtocols] `(protocols, req)`: the subprotocol, or false
   * @param {typeof import('./websocket').WebSocket} [options.WebSocket] This WebSocket or a class
   *   extending it
   * @param {number} [options.pingInterval=0] sluice's heartbeat: off, as ws has none
   * @param {() => void} [callback] A one-time 'listening' listener (`port` mode)
   * @throws {TypeError} not exactly one of `port`, `server`, `noServer`; `ERR_SLUICE_UNKNOWN_OPTION`,
   *   `ERR_SLUICE_INVALID_OPTION` and the sluice Server's option errors
   * @throws {Error} `ERR_SLUICE_WS_UNSUPPORTED` for a ws option sluice cannot provide
   */
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
    this._handshakeTimeout = options.handshakeTimeout === undefined ? DEFAULT_HANDSHAKE_TIMEOUT_MS : options.handshakeTimeout
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
   *
   * @param {(err?: Error) => void} [cb]
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
   *
   * @param {import('http').IncomingMessage} req
   * @param {import('net').Socket} socket
   * @param {Buffer} head
   * @param {(ws: import('./websocket').WebSocket, req: import('http').IncomingMessage) => void} [cb]
   * @throws {Error} `ERR_SLUICE_SOCKET_TAKEN`, `ERR_SLUICE_WS_UNSUPPORTED` (TLS, not TCP)
   * @throws {TypeError} `ERR_SLUICE_INVALID_CALLBACK`
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
      throw unsupported('TLS sockets (wss:// through an https.Server)', "their bytes are ciphertext that only Node's TLS can read: serve wss:// from sluice's own listener with the tls option, or terminate TLS in front of sluice")
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
   *
   * @param {string | Buffer | ArrayBuffer | ArrayBufferView | number} data
   * @param {import('../sluice').PriorityLike | Object} [priority='normal'] Or the options
   * @param {Object} [options] `{ priority, key, ttl, except }`
   * @returns {boolean}
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

function addListeners(server, map) {
  for (const event of Object.keys(map)) server.on(event, map[event])
  return function removeListeners() {
    for (const event of Object.keys(map)) server.removeListener(event, map[event])
  }
}

module.exports = { WebSocketServer }
