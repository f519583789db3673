'use strict'

/**
 * Option objects: the server's (checked and turned into what the native constructor takes), a
 * message's (`{ key, ttl, except }`) and a topic's (`{ history, offsets }`).
 */

const { sluiceError } = require('./errors')
const { MAX_BYTES, MAX_MS, MAX_KEY_BYTES } = require('./constants')

/** Defaults of the event thresholds (the native side holds the same values). */
const DEFAULT_HIGH_WATER_MARK = 64 * 1024
const DEFAULT_LOW_WATER_MARK = 16 * 1024
const DEFAULT_MAX_PENDING_BYTES = 64 * 1024 * 1024
/** Default `maxPayload` (the native side holds the same value). */
const DEFAULT_MAX_PAYLOAD = 1024 * 1024

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

/**
 * The server options, checked.
 *
 * @param {import('./sluice').ServerOptions} [options]
 * @returns {object} The options given (undefined ones left out), `cluster` in its native form
 * @throws {TypeError} `ERR_SLUICE_INVALID_OPTIONS`, `ERR_SLUICE_UNKNOWN_OPTION`, `ERR_SLUICE_INVALID_OPTION`
 * @throws {RangeError} `ERR_SLUICE_OUT_OF_RANGE`, `ERR_SLUICE_INVALID_OPTION`
 */
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

/**
 * The native form of a message's options. Returns undefined when there is nothing to pass.
 *
 * @param {Object} options `{ key, ttl, except }`; undefined or null: none
 * @param {string} [options.key] A conflation key: a non-empty string of at most 1024 bytes
 * @param {number} [options.ttl] Whole ms from 0 (no expiry) to 2^31 - 1. Default: the server's
 *   `defaultTtl` for Normal and Low, none for Critical
 * @param {import('./connection').Connection | import('./connection').Connection[]} [options.except]
 *   Connections of `server` that do not get it (only `withExcept`: broadcast, publish)
 * @param {import('./server').Server} server The server the message goes through
 * @param {boolean} withExcept Whether `except` is allowed
 * @returns {{ key?: string, ttl?: number, except?: number[] } | undefined}
 * @throws {TypeError} `ERR_SLUICE_INVALID_OPTIONS`, `ERR_SLUICE_UNKNOWN_OPTION`, `ERR_SLUICE_INVALID_KEY`, `ERR_SLUICE_INVALID_TTL`, `ERR_SLUICE_INVALID_EXCEPT`
 * @throws {RangeError} `ERR_SLUICE_INVALID_TTL`
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
      if (!server._owns(c)) {
        throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_EXCEPT', 'except must be a Connection of this server, or an array of them')
      }
      ids.push(c.id)
    }
    if (ids.length > 0) out.except = ids
  }
  return out
}

/**
 * A topic's options, checked: null without a history, else its bounds (undefined: the native
 * default) and whether messages carry their offset.
 *
 * @param {Object} options `{ history, offsets }`
 * @param {{ size?: number, bytes?: number, ttl?: number }} [options.history] Bounds of the
 *   history: `size` default 1000 messages, `bytes` default 8388608 (8 MiB), `ttl` default 300000 ms
 * @param {'none' | 'prefix'} [options.offsets='none']
 * @returns {{ size?: number, bytes?: number, ttl?: number, prefix: boolean } | null}
 * @throws {TypeError} `ERR_SLUICE_INVALID_OPTIONS`, `ERR_SLUICE_UNKNOWN_OPTION`, `ERR_SLUICE_INVALID_OPTION`
 * @throws {RangeError} `ERR_SLUICE_INVALID_OPTION`, `ERR_SLUICE_OUT_OF_RANGE`
 */
function topicOptions(options) {
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
  if (history === undefined) return null
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
  return { size: bound('size', 2 ** 31 - 1), bytes: bound('bytes', MAX_BYTES), ttl: bound('ttl', MAX_MS), prefix: offsets === 'prefix' }
}

module.exports = { validateOptions, nativeOptions, toMessageOptions, topicOptions }
