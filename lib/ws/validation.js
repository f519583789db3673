'use strict'

/** Checks of values as ws makes them: close codes, Blobs, and the sockets sluice can take over. */

/** Close codes an application may send (RFC 6455 §7.4), as ws's isValidStatusCode. */
function validCloseCode(code) {
  return (code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006) || (code >= 3000 && code <= 4999)
}

/** A net.Socket over TCP (not a Unix-domain socket, not another Duplex): one sluice can take. */
function isTcp(socket) {
  const handle = socket._handle
  return !!handle && typeof handle.fd === 'number' && !(handle.constructor && handle.constructor.name === 'Pipe')
}

function isBlob(value) {
  return typeof Blob !== 'undefined' && value instanceof Blob
}

module.exports = { validCloseCode, isTcp, isBlob }
