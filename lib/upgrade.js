'use strict'

/**
 * The upgrade: the request objects JavaScript sees, the hooks that decide on a handshake
 * (`verifyClient`, `handleProtocols`), and the hand-over of sockets from Node's http server.
 *
 * A handed-over socket's descriptor is duplicated into sluice and Node's handle is destroyed
 * (without a FIN): from then on the connection costs the event loop nothing. The handshake itself
 * (checks, `allowedOrigins`, the 101) runs on sluice's threads; JavaScript takes part only when a
 * hook is given (a `verify` event, answered with `verifyReply`).
 */

const { sluiceError, nativeError, safeEmit } = require('./errors')
const { kTakenOver, kAnyProtocol, kOwnRequest, EMPTY } = require('./constants')

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

/** An own data property, as an assignment to a plain object would make it. */
function setOwn(obj, name, value) {
  Object.defineProperty(obj, name, { value, writable: true, enumerable: true, configurable: true })
  return value
}

/**
 * The prototype of the request objects of sluice's own listener: the `IncomingMessage` fields
 * applications read most, `method`, `rawHeaders` and `socket.remoteAddress` / `remotePort`, made
 * on first access (then own properties, as before), so that a connection whose request is never
 * read does not keep them (about 250 bytes of JS heap each).
 */
const ownRequestPrototype = {
  __proto__: Object.prototype,
  [kOwnRequest]: true,
  method: 'GET',
  get rawHeaders() {
    return setOwn(this, 'rawHeaders', flatHeaders(this.headers))
  },
  set rawHeaders(value) {
    setOwn(this, 'rawHeaders', value)
  },
  get socket() {
    return setOwn(this, 'socket', { remoteAddress: this.remoteAddress, remotePort: this.remotePort })
  },
  set socket(value) {
    setOwn(this, 'socket', value)
  },
}

/** The same for a listener with the `tls` option: `req.socket.encrypted` is true, as on a TLSSocket. */
const ownTlsRequestPrototype = {
  __proto__: ownRequestPrototype,
  get socket() {
    return setOwn(this, 'socket', { remoteAddress: this.remoteAddress, remotePort: this.remotePort, encrypted: true })
  },
  set socket(value) {
    setOwn(this, 'socket', value)
  },
}

/**
 * Completes the request object of sluice's own listener (see `ownRequestPrototype`).
 *
 * @param {object} request From the native side
 * @param {boolean} secure The listener serves TLS
 */
function ownRequest(request, secure) {
  Object.setPrototypeOf(request, secure ? ownTlsRequestPrototype : ownRequestPrototype)
  shareHeaderValues(request.headers)
  return request
}

/**
 * Header values most clients send alike: a connection keeps its request, and with it these
 * strings, for as long as it is open. One string per distinct value is kept here and shared by
 * every request that carries it, instead of one copy per connection (about 110 bytes of JS heap
 * per connection for a bare client, more for a browser's `User-Agent`). Only the headers listed,
 * which carry no secret and no per-connection value: a value is kept after its connection has
 * gone. Never `Sec-WebSocket-Key`, `Cookie` or `Authorization`, and never
 * `Sec-WebSocket-Protocol`, where browsers' clients often pass a bearer token (a browser cannot
 * set `Authorization` on a WebSocket). Bounded by count and by length; once full, new values are
 * not shared.
 */
const SHARED_VALUES_MAX = 512
const SHARED_VALUE_MAX_LENGTH = 256
const sharedValues = new Map()
const SHARED_HEADERS = new Set([
  'host',
  'upgrade',
  'connection',
  'sec-websocket-version',
  'sec-websocket-extensions',
  'origin',
  'user-agent',
  'accept-encoding',
  'accept-language',
  'cache-control',
  'pragma',
])

function shareHeaderValues(headers) {
  for (const name of Object.keys(headers)) {
    const value = headers[name]
    if (typeof value !== 'string' || value.length > SHARED_VALUE_MAX_LENGTH || !SHARED_HEADERS.has(name)) continue
    const shared = sharedValues.get(value)
    if (shared !== undefined) headers[name] = shared
    else if (sharedValues.size < SHARED_VALUES_MAX) sharedValues.set(value, value)
  }
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

/**
 * `server.handleUpgrade`, with the JavaScript hooks' answers possibly already known: `preset` is
 * `{ verdict, protocol }`, `verdict` as `verifyClient` returns it and `protocol` the subprotocol
 * to answer with (sluice/ws decides while Node still owns the socket, as ws does). The hooks are
 * then not called again for this request. A `preset` needs `askJs` (a `verifyClient` or
 * `handleProtocols` option): the verify event is where it is applied.
 *
 * @param {import('./server').Server} server
 * @param {import('http').IncomingMessage} req
 * @param {import('net').Socket} socket
 * @param {Buffer} [head] Bytes that followed the request head. Default: none
 * @param {Function} [callback] `(conn, req)` once the connection is open
 * @param {{ verdict: unknown, protocol?: string }} [preset]
 */
function handOver(server, req, socket, head, callback, preset) {
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
  if (server._state === 'closing' || server._state === 'closed') {
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
    token = server._native.adopt(fd, req.method || '', req.httpVersion || '', req.url, requestHeaders(req, socket), bytes)
  } catch (err) {
    throw nativeError(err, 'ERR_SLUICE_TAKEOVER_FAILED')
  }
  socket[kTakenOver] = true
  server._handshakes.set(token, { req, callback, preset })
  server._updateHold()
  // Node closes its descriptor; ours keeps the connection open, so no FIN reaches the peer.
  socket.destroy()
}

/**
 * Runs the checks `handleUpgrade` would (sluice/ws's hook to call `verifyClient` before the
 * hand-over, as ws does).
 *
 * @returns {string[] | null} The offered subprotocols of a valid upgrade request, or null
 */
function checkUpgrade(server, req, socket) {
  if (!isRequest(req)) return null
  const headers = requestHeaders(req, socket).map(String)
  return server._native.checkUpgrade(req.method || '', req.httpVersion || '', req.url, headers)
}

/**
 * The `'upgrade'` listener `server.attach(httpServer, { path })` adds.
 *
 * @param {import('./server').Server} server
 * @param {import('http').Server} httpServer
 * @param {string} [path] Only upgrades for this path. Default: every path
 * @returns {(req: import('http').IncomingMessage, socket: import('net').Socket, head: Buffer) => void}
 */
function upgradeListener(server, httpServer, path) {
  return (req, socket, head) => {
    if (path !== undefined && req.url.split('?')[0] !== path) {
      if (httpServer.listenerCount('upgrade') > 1) return
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n')
      return
    }
    try {
      server.handleUpgrade(req, socket, head)
    } catch (err) {
      socket.destroy()
      if (server.listenerCount('error') > 0) safeEmit(server, 'error', err)
    }
  }
}

/**
 * The subprotocol to answer with (undefined: none) for the `protocols` a request offers: the
 * `handleProtocols` hook's choice, else the client's first. Throws ERR_SLUICE_INVALID_PROTOCOL
 * for a choice that was not offered, unless the hook is sluice/ws's (marked `kAnyProtocol`),
 * whose answer is taken as ws takes it.
 */
function chooseProtocol(server, protocols, req) {
  if (protocols.length === 0) return undefined
  const { handleProtocols } = server._options
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
function hookFailed(server, err) {
  if (server.listenerCount('error') === 0) return
  if (!err || typeof err !== 'object') err = new Error(String(err))
  if (!err.code) err.code = 'ERR_SLUICE_VERIFY_FAILED'
  safeEmit(server, 'error', err)
}

/** Runs `verifyClient` and `handleProtocols` for a handshake and answers the native side. */
async function verify(server, token, request, protocols) {
  let entry = server._handshakes.get(token)
  if (!entry) {
    // From sluice's own listener: a request object of our own, kept for 'connection'.
    entry = { req: ownRequest(request, server._options.tls), callback: undefined }
    server._handshakes.set(token, entry)
    server._updateHold()
  }
  const req = entry.req
  const preset = entry.preset
  let status = 0
  let protocol
  let headers
  let body
  try {
    const { verifyClient } = server._options
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
    if (status === 0) protocol = preset ? preset.protocol : chooseProtocol(server, protocols, req)
  } catch (err) {
    status = 500
    protocol = undefined
    headers = undefined
    body = undefined
    hookFailed(server, err)
  }
  if (server._state === 'closed') return
  try {
    server._native.verifyReply(token, status, protocol, headers, body)
  } catch (err) {
    // Headers the native side refuses (CR/LF in a value...): refuse the upgrade plainly.
    server._native.verifyReply(token, 500)
    if (server.listenerCount('error') > 0) safeEmit(server, 'error', nativeError(err, 'ERR_SLUICE_INVALID_VERDICT'))
  }
}

module.exports = { ownRequest, handOver, checkUpgrade, upgradeListener, chooseProtocol, hookFailed, verify }
