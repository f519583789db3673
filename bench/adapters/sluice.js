'use strict'

// sluice under test: new Server({ port, maxBufferedAmount }) and server.broadcast(buf) (Normal).
// Every other option is sluice's default.
//
// Storm ("as fast as the server keeps up"): broadcast() returns at once and the fan-out happens on
// sluice's threads, so nothing on the JS thread slows the producer down by itself (uWS's publish
// and ws's send loop do: they do the fan-out on the JS thread). Without pacing, every client
// overflows maxBufferedAmount within a second and is cut off, as the policy says. So this adapter
// paces the way a sluice user would: it broadcasts only while fewer than 4 broadcasts wait for
// fan-out (server.pendingBroadcasts) and at most 10% of the connections are above highWaterMark
// (server.backpressuredCount), both one atomic read, and otherwise waits 1 ms. It also backs off
// 1 ms when broadcast() returns false (the fan-out queue is full).

const { Server } = require('../..')
const { main } = require('./common')

let server
let open = 0
let peak = 0

main({
  name: 'sluice',
  backoffOnFalse: true,
  async listen(opts) {
    server = new Server({ port: opts.port, host: opts.host, maxBufferedAmount: opts.maxBuffered })
    server.on('error', (err) => process.stderr.write(`sluice server error: ${err && err.stack ? err.stack : err}\n`))
    server.on('connection', (conn) => {
      open++
      if (open > peak) peak = open
      conn.on('close', () => {
        open--
      })
    })
    const { port } = await server.listen()
    return port
  },
  broadcast(buf) {
    return server.broadcast(buf)
  },
  ready: () => server.pendingBroadcasts < 4 && server.backpressuredCount * 10 <= server.connectionCount,
  connections: () => open,
  connectionsPeak: () => peak,
  terminatedByPolicy: () => server.metrics().terminated.overflow,
  extra: () => ({ metrics: server.metrics() }),
})
