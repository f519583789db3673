'use strict'

/**
 * Checks of the arguments of the per-call API (priorities, data, topics, control payloads, close
 * codes) and their conversion to the form the native side takes. Each throws a `TypeError` or
 * `RangeError` with a stable `code`.
 */

const { Priority, MAX_CONTROL_PAYLOAD } = require('./native')
const { sluiceError } = require('./errors')
const { EMPTY } = require('./constants')

const PRIORITIES = new Set([Priority.Critical, Priority.Normal, Priority.Low])

/**
 * A priority as the native side takes it.
 *
 * @param {import('./sluice').PriorityLike} [priority='normal']
 * @returns {Priority}
 * @throws {TypeError|RangeError} `ERR_SLUICE_INVALID_PRIORITY`
 */
function toPriority(priority) {
  if (priority === undefined) return Priority.Normal
  if (typeof priority !== 'string') {
    throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_PRIORITY', `priority must be Priority.Critical, Priority.Normal or Priority.Low, got ${typeof priority}`)
  }
  if (!PRIORITIES.has(priority)) {
    throw sluiceError(RangeError, 'ERR_SLUICE_INVALID_PRIORITY', `priority must be 'critical', 'normal' or 'low', got '${priority}'`)
  }
  return priority
}

/**
 * A Uint8Array view of binary data (no copy), or null for a string.
 *
 * @param {import('./sluice').Data} data
 * @returns {Uint8Array | null}
 * @throws {TypeError} `ERR_SLUICE_INVALID_DATA`
 */
function toBytes(data) {
  if (typeof data === 'string') return null
  if (data instanceof Uint8Array) return data
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
  if (data instanceof ArrayBuffer || (typeof SharedArrayBuffer !== 'undefined' && data instanceof SharedArrayBuffer)) {
    return new Uint8Array(data)
  }
  throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_DATA', `data must be a string, Buffer, TypedArray, DataView or ArrayBuffer, got ${data === null ? 'null' : typeof data}`)
}

/**
 * @param {string} topic A non-empty string
 * @returns {string}
 * @throws {TypeError} `ERR_SLUICE_INVALID_TOPIC`
 */
function toTopic(topic) {
  if (typeof topic !== 'string' || topic.length === 0) {
    throw sluiceError(TypeError, 'ERR_SLUICE_INVALID_TOPIC', 'topic must be a non-empty string')
  }
  return topic
}

/**
 * The payload of a ping or pong: at most 125 bytes; a number is sent as its decimal string.
 *
 * @param {import('./sluice').Data | number} [data] Default: empty
 * @returns {Uint8Array}
 * @throws {RangeError} `ERR_SLUICE_INVALID_DATA`
 */
function controlPayload(data) {
  if (data === undefined) return EMPTY
  if (typeof data === 'number') data = String(data)
  const out = typeof data === 'string' ? Buffer.from(data) : toBytes(data)
  if (out.byteLength > MAX_CONTROL_PAYLOAD) {
    throw sluiceError(RangeError, 'ERR_SLUICE_INVALID_DATA', `ping/pong data must be at most ${MAX_CONTROL_PAYLOAD} bytes, got ${out.byteLength}`)
  }
  return out
}

/**
 * Close codes an application may send (RFC 6455 §7.4): 1000-1003, 1007-1014, 3000-4999.
 *
 * @param {unknown} code
 * @returns {boolean}
 */
function validCloseCode(code) {
  return (
    Number.isInteger(code) &&
    ((code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006) || (code >= 3000 && code <= 4999))
  )
}

module.exports = { toPriority, toBytes, toTopic, controlPayload, validCloseCode }
