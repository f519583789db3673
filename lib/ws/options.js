'use strict'

/**
 * The options of the facade's WebSocketServer: ws's (checked, and mapped to what sluice does),
 * and sluice's own, passed through to the sluice Server (which checks them).
 */

const tls = require('tls')
const { sluiceError } = require('../errors')
const { MAX_BYTES } = require('../native')
const { unsupported } = require('./errors')
const { WebSocket } = require('./websocket')
const { WS_DEFAULT_PING_INTERVAL } = require('./constants')

/** `maxPayload: 0` means no limit in ws: sluice's largest value. */
const SLUICE_MAX_PAYLOAD = MAX_BYTES

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
  // wss:// on sluice's own listener (rustls), in place of ws's { server: https.Server }.
  'tls',
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

/**
 * Checks the ws options and returns the sluice Server options they map to: `maxPayload` (`0`: no
 * limit), `closeTimeout`, `handleProtocols`, `pingInterval` 0 (ws has no heartbeat of its own)
 * and the sluice options given.
 *
 * @param {object} options ws's options, with ws's defaults filled in
 * @returns {object} The sluice Server options, before `port` / `host` / `noServer` / `verifyClient`
 * @throws {TypeError} `ERR_SLUICE_UNKNOWN_OPTION`, `ERR_SLUICE_INVALID_OPTION`
 * @throws {Error} `ERR_SLUICE_WS_UNSUPPORTED`
 */
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
      throw unsupported('an https/tls server', "its sockets carry ciphertext that only Node's TLS can read: serve wss:// from sluice's own listener with new WebSocketServer({ port, tls: { key, cert } }), or terminate TLS in front of sluice")
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

module.exports = { checkOptions }
