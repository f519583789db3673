'use strict'

/**
 * The error of a ws feature sluice cannot provide: an Error with
 * `err.code === 'ERR_SLUICE_WS_UNSUPPORTED'` naming it, thrown at the point it is used (option at
 * construction, method when called, event when a listener is added): never a silent no-op.
 */

const { sluiceError } = require('../errors')

const UNSUPPORTED = 'ERR_SLUICE_WS_UNSUPPORTED'

/**
 * @param {string} feature What is not supported, e.g. `"the 'backlog' option"`
 * @param {string} [hint] What to do instead
 * @returns {Error} code `ERR_SLUICE_WS_UNSUPPORTED`
 */
function unsupported(feature, hint) {
  return sluiceError(Error, UNSUPPORTED, `sluice/ws does not support ${feature}${hint ? `: ${hint}` : ''}`)
}

/** sluice takes over TCP sockets only: their descriptor moves to its threads. */
function notTcp(cause) {
  const err = unsupported('a socket that is not a TCP socket (an http server on a Unix-domain socket, or another Duplex stream)', 'sluice takes the TCP connection over; listen on a TCP port')
  if (cause) err.cause = cause
  return err
}

module.exports = { UNSUPPORTED, unsupported, notTcp }
