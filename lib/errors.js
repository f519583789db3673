'use strict'

/**
 * Errors and how they surface. Every error sluice throws, rejects with or passes to a callback
 * has a stable `err.code` (the message may change): a `TypeError` for a wrong type or
 * conflicting arguments, a `RangeError` for a value out of range, an `Error` otherwise.
 */

/**
 * An error of class `Class` with `err.code = code`.
 *
 * @param {ErrorConstructor} Class `Error`, `TypeError` or `RangeError`
 * @param {string} code A stable code, `'ERR_SLUICE_...'`
 * @param {string} message
 * @returns {Error}
 */
function sluiceError(Class, code, message) {
  const err = new Class(message)
  err.code = code
  return err
}

/**
 * Rethrows `err` asynchronously, so that it surfaces as an uncaught exception exactly as one
 * thrown by a listener of any Node event, without aborting the batch of events being handled.
 *
 * @param {unknown} err
 */
function throwLater(err) {
  process.nextTick(() => {
    throw err
  })
}

/**
 * Calls `fn(...args)`; an exception it throws is rethrown asynchronously (`throwLater`).
 *
 * @param {Function} fn
 * @param {...unknown} args
 */
function callSafely(fn, ...args) {
  try {
    fn(...args)
  } catch (err) {
    throwLater(err)
  }
}

/**
 * `emitter.emit(...args)`, without letting a throwing listener abort the rest of the batch: the
 * error is rethrown asynchronously (`throwLater`).
 *
 * @param {import('events').EventEmitter} emitter
 * @param {...unknown} args The event name and its arguments
 */
function safeEmit(emitter, ...args) {
  try {
    emitter.emit(...args)
  } catch (err) {
    throwLater(err)
  }
}

const NATIVE_CLASSES = { TypeError, RangeError }

/**
 * An error a native call threw, made again in this realm: the native side's errors carry their
 * class (`TypeError`, `RangeError` or `Error`, as its `name`) and their `code` as fields, but they
 * are objects of the addon's realm (the main context), not of the caller's (a `vm` context, such
 * as Jest's, where `instanceof TypeError` would fail for them). An error without a sluice code
 * (napi's own conversion of an argument failed) gets `fallback`, if given, or is passed on as it
 * is.
 *
 * @param {unknown} err
 * @param {string} [fallback] The code of an error without one of sluice's
 * @returns {unknown}
 */
function nativeError(err, fallback) {
  if (err === null || typeof err !== 'object') return err
  const own = typeof err.code === 'string' && err.code.startsWith('ERR_SLUICE_')
  if (!own && fallback === undefined) return err
  const Class = (own && NATIVE_CLASSES[err.name]) || Error
  return sluiceError(Class, own ? err.code : fallback, String(err.message))
}

module.exports = { sluiceError, nativeError, throwLater, callSafely, safeEmit }
