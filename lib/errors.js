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

/** An error thrown by the native side as "ERR_SLUICE_X: message", with its code. */
function nativeError(err) {
  const m = /^(ERR_SLUICE_[A-Z_]+): (.*)$/s.exec(err && err.message)
  return m ? sluiceError(Error, m[1], m[2]) : err
}

module.exports = { sluiceError, nativeError, throwLater, callSafely, safeEmit }
