'use strict'

// ws with the usual guard: before each send, a client over 512 KiB (--max-buffered) of
// bufferedAmount is terminated (and counted) instead of being sent to.

const { WebSocketServer, WebSocket } = require('ws')
const { main } = require('./common')

let wss
let open = 0
let peak = 0
let errors = 0
let terminated = 0
let limit = 512 * 1024

main({
  name: 'ws-guarded',
  listen(opts) {
    limit = opts.maxBuffered
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
  broadcast(buf) {
    wss.clients.forEach((c) => {
      if (c.bufferedAmount > limit) {
        // A terminated client stays in wss.clients until its 'close' event: count it once.
        if (c.readyState === WebSocket.OPEN) terminated++
        c.terminate()
        return
      }
      c.send(buf)
    })
  },
  connections: () => open,
  connectionsPeak: () => peak,
  terminatedByPolicy: () => terminated,
  extra: () => ({ socketErrors: errors }),
})
