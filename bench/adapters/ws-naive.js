'use strict'

// ws, the way most Node code broadcasts: wss.clients.forEach(c => c.send(buf)). No bound on what a
// slow client buffers.

const { WebSocketServer } = require('ws')
const { main } = require('./common')

let wss
let open = 0
let peak = 0
let errors = 0

main({
  name: 'ws-naive',
  listen(opts) {
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
    wss.clients.forEach((c) => c.send(buf))
  },
  connections: () => open,
  connectionsPeak: () => peak,
  terminatedByPolicy: () => 0,
  extra: () => ({ socketErrors: errors }),
})
