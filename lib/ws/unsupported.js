'use strict'

/**
 * The rest of ws's exports: internals sluice does not have. They exist so that code importing
 * them loads, and throw a clear error (ERR_SLUICE_WS_UNSUPPORTED) when used.
 */

const { unsupported } = require('./errors')

function createWebSocketStream() {
  throw unsupported('createWebSocketStream()', 'use the message events and send()')
}

function unsupportedClass(name) {
  const C = {
    [name]: class {
      constructor() {
        throw unsupported(`ws's ${name}`, 'it is an internal of ws')
      }
    },
  }[name]
  return C
}

function unsupportedHelpers(name, methods) {
  const out = {}
  for (const method of methods) {
    out[method] = () => {
      throw unsupported(`ws's ${name}.${method}()`, 'it is an internal of ws')
    }
  }
  return out
}

const PerMessageDeflate = unsupportedClass('PerMessageDeflate')
const Receiver = unsupportedClass('Receiver')
const Sender = unsupportedClass('Sender')
const extension = unsupportedHelpers('extension', ['format', 'parse'])
const subprotocol = unsupportedHelpers('subprotocol', ['parse'])

module.exports = { createWebSocketStream, extension, PerMessageDeflate, Receiver, Sender, subprotocol }
