'use strict'

// ws, the way most Node code broadcasts: wss.clients.forEach(c => c.send(buf)). No bound on what a
// slow client buffers.

const { runWsAdapter } = require('./ws-server')

runWsAdapter(
  'ws-naive',
  (wss, buf) => wss.clients.forEach((c) => c.send(buf)),
  () => 0,
)
