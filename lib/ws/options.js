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
const { WS_DEFAULT_PING_INTERVAL, WS_DEFAULT_DEFLATE_THRESHOLD } = require('./constants')

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

/** ws's perMessageDeflate keys that mean the same in sluice, with sluice's name for each. */
const DEFLATE_KEYS = {
  threshold: 'threshold',
  serverNoContextTakeover: 'serverNoContextTakeover',
  clientNoContextTakeover: 'clientNoContextTakeover',
  serverMaxWindowBits: 'serverMaxWindowBits',
  clientMaxWindowBits: 'clientMaxWindowBits',
}

/** ws's perMessageDeflate keys that sluice has no equivalent for, with why. */
const DEFLATE_UNSUPPORTED = {
  zlibInflateOptions: 'sluice inflates in Rust (maxPayload bounds the inflated size)',
  concurrencyLimit: "sluice compresses on its own threads, not in Node's zlib thread pool",
}

/** zlib options of ws's `zlibDeflateOptions`: only `level` maps (to sluice's `level`). */
const DEFLATE_ZLIB_HINT = 'only zlibDeflateOptions.level maps to sluice (its deflate runs in Rust)'

/**
 * ws's `perMessageDeflate` as sluice's: `false` (or left out) stays off; `true` and an object
 * turn it on, with ws's default threshold (1024) unless one is given, and sluice's other defaults
 * (`clientNoContextTakeover` true, where ws's is false: sluice then keeps no inflate state per
 * connection). The keys that mean the same
 * in both pass through (sluice checks their values): `threshold`, `serverNoContextTakeover`,
 * `clientNoContextTakeover`, `serverMaxWindowBits`, `clientMaxWindowBits` (a number; `true`, or
 * `false` for `clientMaxWindowBits`, is sluice's default: 15, the client's own choice) and
 * `zlibDeflateOptions.level` (`-1`, zlib's default, is sluice's default). Every other ws key
 * throws ERR_SLUICE_WS_UNSUPPORTED, naming all of them; a key ws does not have either throws
 * ERR_SLUICE_UNKNOWN_OPTION.
 *
 * @param {boolean | object | null | undefined} pmd
 * @returns {undefined | { threshold: number, level?: number, serverMaxWindowBits?: number,
 *   clientMaxWindowBits?: number, serverNoContextTakeover?: boolean, clientNoContextTakeover?: boolean }}
 */
function deflateOptions(pmd) {
  if (pmd === undefined || pmd === null || pmd === false) return undefined
  if (pmd === true) return { threshold: WS_DEFAULT_DEFLATE_THRESHOLD }
  if (typeof pmd !== 'object' || Array.isArray(pmd)) {
    throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_OPTION', `perMessageDeflate must be a boolean or an object, got ${Array.isArray(pmd) ? 'an array' : typeof pmd}`)
  }
  const out = { threshold: WS_DEFAULT_DEFLATE_THRESHOLD }
  const refused = []
  for (const key of Object.keys(pmd)) {
    const value = pmd[key]
    if (value === undefined) continue
    if (key === 'zlibDeflateOptions') {
      if (value === null || typeof value !== 'object' || Array.isArray(value)) {
        throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_OPTION', 'perMessageDeflate.zlibDeflateOptions must be an object')
      }
      for (const zkey of Object.keys(value)) {
        if (value[zkey] === undefined) continue
        if (zkey !== 'level') refused.push(`zlibDeflateOptions.${zkey}`)
        else if (value.level !== -1) out.level = value.level
      }
    } else if (Object.prototype.hasOwnProperty.call(DEFLATE_UNSUPPORTED, key)) {
      refused.push(key)
    } else if (!Object.prototype.hasOwnProperty.call(DEFLATE_KEYS, key)) {
      const hint = key === 'level' ? " (ws's name for it is zlibDeflateOptions.level)" : ''
      throw sluiceError(TypeError, 'ERR_SLUICE_UNKNOWN_OPTION', `unknown option 'perMessageDeflate.${key}' (not a ws perMessageDeflate option)${hint}`)
    } else if (key === 'serverMaxWindowBits' && value === false) {
      // ws: refuse the offers that ask for a smaller server window. sluice accepts them (it
      // compresses with the window the client asks for).
      refused.push('serverMaxWindowBits: false')
    } else if ((key === 'serverMaxWindowBits' || key === 'clientMaxWindowBits') && typeof value === 'boolean') {
      // true (and false for the client's window): no limit of the server's own, as sluice's
      // default (15) is.
    } else {
      out[DEFLATE_KEYS[key]] = value
    }
  }
  if (refused.length > 0) {
    const names = refused.map((k) => `'perMessageDeflate.${k}'`).join(', ')
    const why = refused.map((k) => (k.startsWith('zlibDeflateOptions.') ? DEFLATE_ZLIB_HINT : DEFLATE_UNSUPPORTED[k] || 'sluice accepts every server_max_window_bits a client offers'))
    throw unsupported(refused.length === 1 ? `the option ${names}` : `the options ${names}`, [...new Set(why)].join('; '))
  }
  return out
}

/**
 * Checks the ws options and returns the sluice Server options they map to: `maxPayload` (`0`: no
 * limit), `closeTimeout`, `handleProtocols`, `perMessageDeflate` (see `deflateOptions`),
 * `pingInterval` 0 (ws has no heartbeat of its own) and the sluice options given.
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
  const deflate = deflateOptions(options.perMessageDeflate)
  if (deflate !== undefined) core.perMessageDeflate = deflate
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

module.exports = { checkOptions, deflateOptions }
