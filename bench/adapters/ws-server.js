'use strict'

// The part the two `ws` adapters share: a WebSocketServer that counts open connections and socket
// errors. Each adapter supplies only its broadcast loop.

const { WebSocketServer } = require('ws')
const { main } = require('./common')

/**
 * @param {string} name adapter name
 * @param {(wss: WebSocketServer, buf: Buffer, opts: object) => void} broadcast
 * @param {() => number} terminatedByPolicy
 */
function runWsAdapter(name, broadcast, terminatedByPolicy) {
  let wss
  let options
  let open = 0
  let peak = 0
  let errors = 0
  main({
    name,
    listen(opts) {
      options = opts
      return new Promise((resolve, reject) => {
        wss = new WebSocketServer({ port: opts.port, host: opts.host })
        wss.on('connection', (ws) => {
          open++
          if (open > peak) peak = open
          ws.on('error', () => {
            errors++
          })
          ws.on('close', () => {
            open--
          })
        })
        wss.on('error', reject)
        wss.on('listening', () => resolve(wss.address().port))
      })
    },
    broadcast: (buf) => broadcast(wss, buf, options),
    connections: () => open,
    connectionsPeak: () => peak,
    terminatedByPolicy,
    extra: () => ({ socketErrors: errors }),
  })
}

module.exports = { runWsAdapter }
