'use strict'

/**
 * Option objects: what JavaScript keeps of the server's (the native side checks them), a
 * message's (`{ key, ttl, except }`) and a topic's (`{ history, offsets }`).
 */

const { MAX_BYTES, MAX_MS } = require('./native')
const { sluiceError } = require('./errors')
const { MAX_KEY_BYTES } = require('./constants')

/**
 * What JavaScript itself keeps of the server options, which the native constructor has checked
 * (`src/napi/options.rs`, the one place options are checked and their defaults live): the hooks,
 * whether there is no listener of sluice's own, and whether there is a cluster.
 *
 * @param {import('./sluice').ServerOptions} [options]
 * @returns {{ noServer: boolean, verifyClient?: Function, handleProtocols?: Function, cluster: boolean }}
 */
function jsOptions(options) {
  if (options === undefined) return { noServer: false, cluster: false, tls: false }
  const { noServer, verifyClient, handleProtocols, cluster, tls } = options
  return { noServer: noServer === true, verifyClient, handleProtocols, cluster: cluster !== undefined, tls: tls !== undefined }
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

module.exports = { jsOptions, toMessageOptions, topicOptions }
